{{/* The image of a component: its own value, else <hub>/<name>:<tag>. */}}
{{- define "zmesh.image" -}}
{{- $name := index . 0 -}}{{- $own := index . 1 -}}{{- $g := index . 2 -}}
{{- if $own -}}{{ $own }}{{- else -}}{{ $g.hub }}/{{ $name }}:{{ $g.tag }}{{- end -}}
{{- end }}

{{/* Labels every object carries; the argument is the component's name. */}}
{{- define "zmesh.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/part-of: zmesh
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ .root.Chart.Name }}-{{ .root.Chart.Version }}
{{- end }}

{{/* zmeshd's address as ztunnels and waypoints dial it. */}}
{{- define "zmesh.xdsAddress" -}}
zmeshd.{{ .Release.Namespace }}.svc:15012
{{- end }}

{{/* Pod-level scheduling values of a component (its values block). */}}
{{- define "zmesh.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{- define "zmesh.pullSecrets" -}}
{{- with .imagePullSecrets }}
imagePullSecrets:
{{- range . }}
- name: {{ . }}
{{- end }}
{{- end }}
{{- end }}
