"""The ImageModel operator: ImageModel (kubediffusion.io/v1alpha1) → cache PVC + Job, Deployment, Service.

Modules, in the order a reconcile uses them:

- ``spec``      typed ImageModel spec (pydantic; no kopf/kubernetes imports, the router reads it too)
- ``settings``  ``KD_OPERATOR_*`` settings (namespace, inference image, hardware profiles, resync/poll)
- ``names``     fixed child names, labels, owner reference (docs/contracts.md)
- ``resources`` pure manifest builders
- ``status``    status as a pure function of observed children (phase, conditions, reasons, events)
- ``kube``      the only module that talks to the API server (server-side apply, get/list/delete)
- ``reconcile`` one level-triggered reconcile: read → parse → observe → build → apply → status
- ``handlers``  kopf registration (create/update/resume + timer → reconcile); ``main`` runs kopf

Condition reasons are a contract (alerts and tests match them): see ``status``.
"""
