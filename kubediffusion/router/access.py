"""What a tenant sees: the routing table as if the models outside its allow-list did not exist.

Every route that names or lists models (generations, edits, variations, ``/v1/models``, ``/v1/metadata``,
``/imagine/*``, stored images by their model) resolves through :meth:`TenantViews.table_for`, so a model the
tenant may not use is exactly a missing one: the same 404 ``model_not_found`` with the same words, by the
same code path (no pod, no quota, no extra work that timing could tell apart), absent from every list; and
the default model is the tenant's only when it may use it (a tenant that may use exactly one model, where
no default is marked, has that one as its default, as a cluster of one model would).

Views are built once per routing table and tenant allow-list, and dropped when discovery swaps the table.
"""

from __future__ import annotations

from collections.abc import Callable

from kubediffusion.router.routing import RoutingTable
from kubediffusion.router.tenants import Tenant

MAX_VIEWS = 1024  # allow-lists seen for one table (tenants-file edits add some); then start over


class TenantViews:
    def __init__(self, table: Callable[[], RoutingTable]) -> None:
        self._table = table
        self._source: RoutingTable | None = None
        self._views: dict[tuple[str, ...], RoutingTable] = {}

    def table_for(self, tenant: Tenant) -> RoutingTable:
        table = self._table()
        if tenant.models is None:
            return table
        if table is not self._source or len(self._views) >= MAX_VIEWS:
            self._source, self._views = table, {}
        view = self._views.get(tenant.models)
        if view is None:
            view = self._views[tenant.models] = table.only(tenant.allows)
        return view

    def may_see(self, tenant: Tenant, model: str | None) -> bool:
        """Whether a stored image of ``model`` (its canonical name, as recorded) belongs to the tenant's
        view: by the model's name and aliases while it exists, else by its name alone."""
        if tenant.models is None:
            return True
        if model is None:
            return False
        entry = self._table().named(model)
        return tenant.allows(entry) if entry is not None else tenant.allows_name(model)
