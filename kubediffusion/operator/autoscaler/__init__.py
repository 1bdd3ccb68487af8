"""The built-in autoscaler (spec.autoscaling): demand from metrics, a pure decision, writes through /scale.

* :mod:`.decision`: samples in, desired replicas and a reason out (pure, table-tested);
* :mod:`.demand`: which pods to scrape and what their ``/metrics`` say (bounded scrapes);
* :mod:`.loop`: the task in the operator's event loop that ties them to the API server.
"""
