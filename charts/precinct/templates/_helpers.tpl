{{/* Names, labels and image references shared by every template. */}}
{{- define "precinct.fullname" -}}
{{- if contains "precinct" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-precinct" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "precinct.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/part-of: precinct
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* selector labels: include with (dict "ctx" $ "component" "operator") */}}
{{- define "precinct.selector" -}}
app.kubernetes.io/name: {{ .name | default (printf "precinct-%s" .component) }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "precinct.image" -}}
{{- $img := .image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .appVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "precinct.operatorImage" -}}
{{- include "precinct.image" (dict "image" .Values.image.operator "appVersion" .Chart.AppVersion) -}}
{{- end -}}
{{- define "precinct.runnerImage" -}}
{{- include "precinct.image" (dict "image" .Values.image.runner "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{- define "precinct.identitySecret" -}}
{{- default (printf "%s-nats-identity" (include "precinct.fullname" .)) .Values.identity.secretName -}}
{{- end -}}

{{- define "precinct.natsName" -}}{{ include "precinct.fullname" . }}-nats{{- end -}}
{{- define "precinct.fleetConfigMap" -}}{{ include "precinct.fullname" . }}-fleet{{- end -}}
{{/* The fleet is sharded over this many ConfigMaps <fleet>-<k> (k8s/fleetmap.py: one object holds at most 1 MiB). */}}
{{- define "precinct.fleetShards" -}}64{{- end -}}

{{/* The fleet volume of the gateway and storage: every shard projected as fleet-<k>.json. */}}
{{- define "precinct.fleetVolume" -}}
projected:
  sources:
    {{- range $k := until (int (include "precinct.fleetShards" .)) }}
    - configMap:
        name: {{ include "precinct.fleetConfigMap" $ }}-{{ $k }}
        optional: true
        items: [{key: fleet-{{ $k }}.json, path: fleet-{{ $k }}.json}]
    {{- end }}
{{- end -}}

{{/* Where every client connects: the chart's NATS Service, or nats.external.url. */}}
{{- define "precinct.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- printf "nats://%s.%s.svc:%d" (include "precinct.natsName" .) .Release.Namespace (int .Values.nats.port) -}}
{{- else -}}
{{- required "nats.external.url is required when nats.enabled=false" .Values.nats.external.url -}}
{{- end -}}
{{- end -}}

{{/* The NetworkPolicy peer (namespace + pod labels) of the NATS server. */}}
{{- define "precinct.natsNamespace" -}}
{{- if .Values.nats.enabled -}}{{ .Release.Namespace }}{{- else -}}{{ default .Release.Namespace .Values.nats.external.namespace }}{{- end -}}
{{- end -}}
{{- define "precinct.natsPodLabels" -}}
{{- if .Values.nats.enabled -}}
{{- include "precinct.selector" (dict "ctx" . "component" "nats" "name" "nats") -}}
{{- else -}}
{{- toYaml .Values.nats.external.podLabels -}}
{{- end -}}
{{- end -}}

{{- define "precinct.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "precinct.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}

{{- define "precinct.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* common labels + selector labels, without duplicate keys: (dict "ctx" $ "component" "x" ["name" "y"]) */}}
{{- define "precinct.allLabels" -}}
{{- $common := include "precinct.labels" .ctx | fromYaml -}}
{{- $sel := include "precinct.selector" . | fromYaml -}}
{{- toYaml (merge $sel $common) -}}
{{- end -}}
