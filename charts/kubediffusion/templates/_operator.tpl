{{/* Operator helpers. */}}

{{- define "kubediffusion.operator.fullname" -}}
{{- printf "%s-operator" (include "kubediffusion.fullname" .) }}
{{- end }}

{{/* Selector labels: stable across upgrades, so no versions here. */}}
{{- define "kubediffusion.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubediffusion.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kubediffusion.operator.labels" -}}
{{ include "kubediffusion.commonLabels" . }}
{{ include "kubediffusion.operator.selectorLabels" . }}
{{- end }}

{{- define "kubediffusion.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "kubediffusion.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
RBAC rules of the operator: exactly the calls kubediffusion/operator makes (kube.py, reconcile.py,
handlers.py) and kopf makes for it. kopf's resource scanning is disabled by the operator, so it needs
no access to namespaces or CRDs. No Secrets at all: a model's token Secret is resolved by the kubelet
for the cache Job's pod (a missing one shows as SecretNotFound). Keep in step with
tests/cluster/test_chart_rbac.py.
*/}}
{{- define "kubediffusion.operator.rules" -}}
# The ImageModels it reconciles: kopf lists and watches them and patches its progress annotations;
# reconcile reads each one.
- apiGroups: [kubediffusion.io]
  resources: [imagemodels]
  verbs: [get, list, watch, patch]
# Phase, conditions, endpoint, and the autoscaler's status.autoscaling (server-side apply of the status
# subresource).
- apiGroups: [kubediffusion.io]
  resources: [imagemodels/status]
  verbs: [patch]
# The autoscaler writes spec.replicas through the scale subresource, as `kubectl scale` does.
- apiGroups: [kubediffusion.io]
  resources: [imagemodels/scale]
  verbs: [patch]
# Children carry owner references with blockOwnerDeletion, which needs this where the
# OwnerReferencesPermissionEnforcement admission plugin is enabled.
- apiGroups: [kubediffusion.io]
  resources: [imagemodels/finalizers]
  verbs: [update]
# Children: server-side apply is a PATCH that creates a missing object (so also create), read back on
# conflicts. A stale cache Job is deleted and re-created. Deployments and Jobs are also watched (by
# label, as kopf does for pods: handlers.py CHILD_RESOURCES) so that a change to one reconciles its model.
- apiGroups: [""]
  resources: [persistentvolumeclaims, services]
  verbs: [get, create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# Model and cache pods: listed by label to tell ImagePullBackOff, Unschedulable and exit codes apart,
# and watched so a crash or a finished cache Job shows in the model's status at once. The autoscaler
# lists the ready model pods (and the router pods, when they run in this namespace) to scrape them.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Events on each phase change (kopf.event posts core/v1 Events).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* The router pods' label selector, k=v,k=v (the operator's KD_OPERATOR_ROUTER_SELECTOR). */}}
{{- define "kubediffusion.operator.routerSelector" -}}
{{- $labels := include "kubediffusion.router.selectorLabels" . | fromYaml }}
{{- $terms := list }}
{{- range $key := keys $labels | sortAlpha }}
{{- $terms = append $terms (printf "%s=%s" $key (get $labels $key)) }}
{{- end }}
{{- join "," $terms }}
{{- end }}
