"""The ImageModel operator: ImageModel (kubediffusion.io/v1alpha1) → cache PVC + Job, Deployment, Service.

Modules, in the order a reconcile uses them (the ImageModel contract it shares with the router, i.e.
typed spec, typed status, names and labels, lives in :mod:`kubediffusion.imagemodel`):

- ``settings``  CLI flags and ``KD_OPERATOR_*`` settings (namespace, inference image, hardware profiles, resync/poll,
  allowed images, download policy)
- ``policy``    what the operator refuses to run: images outside the allow-list, url sources outside the download
  policy (which it also passes to fetch-model)
- ``resources`` pure manifest builders
- ``problems``  what the kubelet, scheduler and Job controller report as wrong with our pods and Jobs
- ``status``    the typed status as a pure function of one reconcile's observations (phase, conditions, events)
- ``kube``      the only module that talks to the API server (lightkube; server-side apply, get/list/delete)
- ``reconcile`` one level-triggered reconcile: read → parse → observe → build → apply → status
- ``handlers``  kopf registration (create/update/resume + timer → reconcile); ``main`` runs kopf

Condition reasons are a contract (alerts and tests match them): see :mod:`kubediffusion.imagemodel.status`.
"""
