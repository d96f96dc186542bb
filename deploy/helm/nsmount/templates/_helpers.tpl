{{/*
Names are cut to 52 characters so that a name plus its longest suffix
("-metrics") is still a valid Service name (a DNS label of at most 63).
*/}}
{{- define "nsmount.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "nsmount.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The labels that select the agent's pods: never change them in an upgrade
(a DaemonSet's selector is immutable). */}}
{{- define "nsmount.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nsmount.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nsmount.labels" -}}
{{ include "nsmount.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | replace "+" "_" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nsmount
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "nsmount.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (.image.tag | default .appVersion) }}
{{- end }}
{{- end }}

{{/* The CSI driver's name: also its plugin directory under kubelet's. */}}
{{- define "nsmount.csiDriver" -}}
nfs.nsmount.io
{{- end }}

{{- define "nsmount.csiPluginDir" -}}
{{ .Values.kubeletDir }}/plugins/{{ include "nsmount.csiDriver" . }}
{{- end }}
