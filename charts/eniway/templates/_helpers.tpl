{{/* Chart name, truncated for label values. */}}
{{- define "eniway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Base name of every object: the release name, or release-chart when they differ. */}}
{{- define "eniway.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "eniway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "eniway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: eniway
{{- end -}}

{{/* Selector labels of one component: pass (list . "operator"). */}}
{{- define "eniway.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "eniway.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "eniway.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "eniway.operatorServiceAccount" -}}
{{- default (printf "%s-operator" (include "eniway.fullname" .)) .Values.serviceAccount.operatorName -}}
{{- end -}}

{{- define "eniway.agentServiceAccount" -}}
{{- default (printf "%s-agent" (include "eniway.fullname" .)) .Values.serviceAccount.agentName -}}
{{- end -}}

{{- define "eniway.configName" -}}
{{- printf "%s-config" (include "eniway.fullname" .) -}}
{{- end -}}

{{- define "eniway.clusterId" -}}
{{- default .Release.Name .Values.clusterId -}}
{{- end -}}

{{- define "eniway.cloudsimName" -}}
{{- printf "%s-cloudsim" (include "eniway.fullname" .) -}}
{{- end -}}

{{/* Environment variable prefix kubelet gives the cloudsim Service's links. */}}
{{- define "eniway.cloudsimEnvPrefix" -}}
{{- include "eniway.cloudsimName" . | upper | replace "-" "_" | replace "." "_" -}}
{{- end -}}

{{/*
Cloud endpoints as container env. With the chart's cloudsim, the address comes from the
Service link variables kubelet injects (the operator and the agent use the host network and
the host's resolver, so cluster DNS names would not resolve before the pod network exists).
*/}}
{{- define "eniway.cloudEnv" -}}
- name: ENIWAY_CLOUD_PROVIDER
  value: {{ .Values.cloud.provider | quote }}
- name: ENIWAY_CLOUD_REGION
  value: {{ .Values.cloud.region | quote }}
{{- if eq .Values.cloud.provider "cloudsim" }}
{{- $p := include "eniway.cloudsimEnvPrefix" . }}
- name: ENIWAY_CLOUD_ENDPOINT
  value: {{ default (printf "http://$(%s_SERVICE_HOST):$(%s_SERVICE_PORT_API)" $p $p) .Values.cloud.endpoint | quote }}
- name: ENIWAY_METADATA_ENDPOINT
  value: {{ default (printf "http://$(%s_SERVICE_HOST):$(%s_SERVICE_PORT_METADATA)" $p $p) .Values.cloud.metadataEndpoint | quote }}
{{- else }}
{{- with .Values.cloud.endpoint }}
- name: ENIWAY_CLOUD_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.cloud.metadataEndpoint }}
- name: ENIWAY_METADATA_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "eniway.podEnv" -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
{{- end -}}
