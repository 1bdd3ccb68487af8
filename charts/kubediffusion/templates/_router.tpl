{{/* Router helpers. */}}

{{- define "kubediffusion.router.fullname" -}}
{{- printf "%s-router" (include "kubediffusion.fullname" .) }}
{{- end }}

{{/* Selector labels: stable across upgrades, so no versions here. */}}
{{- define "kubediffusion.router.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubediffusion.name" . }}-router
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: router
{{- end }}

{{- define "kubediffusion.router.labels" -}}
{{ include "kubediffusion.commonLabels" . }}
{{ include "kubediffusion.router.selectorLabels" . }}
{{- end }}

{{- define "kubediffusion.router.serviceAccountName" -}}
{{- if .Values.router.serviceAccount.create }}
{{- default (include "kubediffusion.router.fullname" .) .Values.router.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.router.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Secret holding the API keys: the user's existing one or the chart's. */}}
{{- define "kubediffusion.router.apiKeysSecretName" -}}
{{- default (printf "%s-api-keys" (include "kubediffusion.router.fullname" .)) .Values.router.auth.existingSecret }}
{{- end }}

{{- define "kubediffusion.router.apiKeysSecretKey" -}}
{{- if .Values.router.auth.existingSecret }}
{{- .Values.router.auth.existingSecretKey }}
{{- else -}}
api-keys
{{- end }}
{{- end }}

{{/* Secret holding the URL signing key: the user's existing one or the chart's. */}}
{{- define "kubediffusion.router.signingKeySecretName" -}}
{{- default (printf "%s-signing-key" (include "kubediffusion.router.fullname" .)) .Values.router.urls.signingKeySecret }}
{{- end }}

{{- define "kubediffusion.router.signingKeySecretKey" -}}
{{- if .Values.router.urls.signingKeySecret }}
{{- .Values.router.urls.signingKeySecretKey }}
{{- else -}}
signing-key
{{- end }}
{{- end }}

{{/* The tenants file: the user's existing Secret or the chart's (when router.tenants.list is set). */}}
{{- define "kubediffusion.router.tenantsEnabled" -}}
{{- if or .Values.router.tenants.list .Values.router.tenants.existingSecret }}
{{- if not .Values.router.auth.enabled }}
{{- fail "router.tenants needs router.auth.enabled: tenants are found by their API keys" }}
{{- end -}}
true
{{- end }}
{{- end }}

{{- define "kubediffusion.router.tenantsSecretName" -}}
{{- default (printf "%s-tenants" (include "kubediffusion.router.fullname" .)) .Values.router.tenants.existingSecret }}
{{- end }}

{{- define "kubediffusion.router.tenantsSecretKey" -}}
{{- if .Values.router.tenants.existingSecret }}
{{- .Values.router.tenants.existingSecretKey }}
{{- else -}}
tenants.yaml
{{- end }}
{{- end }}

{{/* The ConfigMap of usage counts shared by the router replicas (router.usage.shared). */}}
{{- define "kubediffusion.router.usageConfigMapName" -}}
{{- printf "%s-usage" (include "kubediffusion.router.fullname" .) }}
{{- end }}

{{- define "kubediffusion.router.storageClaimName" -}}
{{- default (printf "%s-storage" (include "kubediffusion.router.fullname" .)) .Values.router.storage.persistence.existingClaim }}
{{- end }}

{{/* RBAC rules of the router; keep in step with kubediffusion/router and tests/cluster/test_chart_rbac.py. */}}
{{- define "kubediffusion.router.rules" -}}
# Discovery (kube_discovery.py lists, then watches): model names, aliases, defaults and readiness
# come from ImageModels ...
- apiGroups: [kubediffusion.io]
  resources: [imagemodels]
  verbs: [list, watch]
# ... and the addresses and readiness of their inference pods (selected by label).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# A model at zero replicas is woken by asking for one through its scale subresource (read, then write
# with that resourceVersion): the router's only write, and to nothing but spec.replicas.
- apiGroups: [kubediffusion.io]
  resources: [imagemodels/scale]
  verbs: [get, patch]
{{- end }}
