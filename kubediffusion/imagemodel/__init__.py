"""The ImageModel contract: what the operator, the router and ``kubediffusion local`` agree on.

* :mod:`.resource`: group, version, kind and plural of the custom resource (defined once);
* :mod:`.spec`: the typed spec, parsed once wherever an ImageModel is read;
* :mod:`.engine`: ``spec.engine``, what makes the images (diffusers, or another engine our server fronts);
* :mod:`.sources`: where weights come from (``spec.source``, and the sources of the pipeline's extras);
* :mod:`.pipelines`: ``spec.adapters``, ``scheduler``, ``components``, ``safety`` (the model server's rules);
* :mod:`.wire`: what the spec's parts are made of (camelCase models, the field-naming error, key refs);
* :mod:`.status`: the typed status the operator writes and the router reads;
* :mod:`.names`: fixed child names, labels, ports, mounts and the cache marker's file name;
* :mod:`.tiny`: the smoke-test model's serving defaults and limits.

No kopf, no Kubernetes client, no torch: any component may import it (import-linter keeps it at the
bottom, beside :mod:`kubediffusion.api`).
"""
