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

{{/* Whether this release runs the emulator itself. */}}
{{- define "eniway.deployCloudsim" -}}
{{- if and (eq .Values.cloud.provider "cloudsim") .Values.cloudsim.deploy -}}true{{- end -}}
{{- end -}}

{{/*
Cloud settings as container env, from the ConfigMap. With the chart's own cloudsim the address
comes from the Service link variables kubelet injects: the operator uses the host network and
the host's resolver, so a cluster DNS name would not resolve before the pod network exists.
*/}}
{{- define "eniway.cloudEnv" -}}
{{- $cm := include "eniway.configName" . }}
- name: ENIWAY_CLUSTER_ID
  valueFrom: {configMapKeyRef: {name: {{ $cm }}, key: cluster-id}}
- name: ENIWAY_CLOUD_PROVIDER
  valueFrom: {configMapKeyRef: {name: {{ $cm }}, key: cloud-provider}}
- name: ENIWAY_CLOUD_REGION
  valueFrom: {configMapKeyRef: {name: {{ $cm }}, key: cloud-region}}
{{- if .Values.cloud.endpoint }}
- name: ENIWAY_CLOUD_ENDPOINT
  valueFrom: {configMapKeyRef: {name: {{ $cm }}, key: cloud-endpoint}}
{{- else if include "eniway.deployCloudsim" . }}
{{- $p := include "eniway.cloudsimEnvPrefix" . }}
- name: ENIWAY_CLOUD_ENDPOINT
  value: {{ printf "http://$(%s_SERVICE_HOST):$(%s_SERVICE_PORT_API)" $p $p | quote }}
{{- end }}
{{- $cred := .Values.cloud.credentials }}
{{- if $cred.existingSecret }}
# The Secret is mounted (volume "cloud-credentials"): the operator re-reads its files when
# kubelet updates them, so a rotated AccessKey needs no restart.
- name: ENIWAY_CLOUD_CREDENTIALS_DIR
  value: {{ include "eniway.credentialsDir" . | quote }}
{{- else if eq .Values.cloud.provider "cloudsim" }}
# The emulator's built-in AccessKey pair (not a secret: it guards nothing real).
- name: ALIBABA_CLOUD_ACCESS_KEY_ID
  value: eniway
- name: ALIBABA_CLOUD_ACCESS_KEY_SECRET
  value: eniway-secret
{{- end }}
{{- end -}}

{{- define "eniway.podEnv" -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
{{- with .Values.apiServer }}
{{- if .host }}
# Declared here, these win over the ones kubelet injects from the kubernetes Service.
- name: KUBERNETES_SERVICE_HOST
  value: {{ .host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ required "apiServer.port is required with apiServer.host" .port | toString | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Seconds from a duration as the operator reads it: a number, or 250ms / 30s / 5m / 1h. */}}
{{- define "eniway.seconds" -}}
{{- $v := toString . | trim -}}
{{- if regexMatch "^[0-9.]+ms$" $v -}}{{ divf (trimSuffix "ms" $v | float64) 1000 }}
{{- else if regexMatch "^[0-9.]+s$" $v -}}{{ trimSuffix "s" $v | float64 }}
{{- else if regexMatch "^[0-9.]+m$" $v -}}{{ mulf (trimSuffix "m" $v | float64) 60 }}
{{- else if regexMatch "^[0-9.]+h$" $v -}}{{ mulf (trimSuffix "h" $v | float64) 3600 }}
{{- else -}}{{ $v | float64 }}
{{- end -}}
{{- end -}}


{{- define "eniway.credentialsDir" -}}
/etc/eniway/cloud-credentials
{{- end -}}

{{- define "eniway.webhookName" -}}
{{- printf "%s-webhook" (include "eniway.fullname" .) -}}
{{- end -}}
