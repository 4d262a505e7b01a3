package route

import "net/http"

// AppendAction is Envoy's HeaderValueOption.HeaderAppendAction.
type AppendAction uint8

const (
	// AppendIfExistsOrAdd adds the value as one more value of the header.
	AppendIfExistsOrAdd AppendAction = iota
	// AddIfAbsent adds the header only if the headers do not hold it yet.
	AddIfAbsent
	// OverwriteIfExistsOrAdd replaces all values of the header.
	OverwriteIfExistsOrAdd
	// OverwriteIfExists replaces the header only if it is present.
	OverwriteIfExists
)

var appendActionNames = [...]string{"append", "add-if-absent", "overwrite", "overwrite-if-exists"}

func (a AppendAction) String() string { return appendActionNames[a] }

// HeaderValue is one entry of request_headers_to_add or
// response_headers_to_add. Values are literal: the config package refuses
// Envoy's %COMMAND% formatters and turns "%%" into "%".
type HeaderValue struct {
	Name      string // lowercase, as configured
	Value     string
	Action    AppendAction
	KeepEmpty bool // keep_empty_value: add the header even if Value is empty

	key string
}

// HeaderMutation is one level's (route configuration, virtual host, route or
// weighted cluster) headers_to_remove and headers_to_add.
type HeaderMutation struct {
	Remove []string // lowercase, as configured
	Add    []HeaderValue

	removeKeys []string
}

// NewHeaderMutation returns m ready for use (lookup keys computed), or nil
// if m changes nothing.
func NewHeaderMutation(remove []string, add []HeaderValue) *HeaderMutation {
	if len(remove) == 0 && len(add) == 0 {
		return nil
	}
	m := &HeaderMutation{Remove: remove, Add: add}
	for _, r := range remove {
		m.removeKeys = append(m.removeKeys, http.CanonicalHeaderKey(r))
	}
	for i := range m.Add {
		m.Add[i].key = http.CanonicalHeaderKey(m.Add[i].Name)
	}
	return m
}

// Apply performs Envoy's HeaderParser::evaluateHeaders on h: removals
// first; then the presence checks of AddIfAbsent and OverwriteIfExists,
// all against the headers as they stand before this level adds anything (so
// two AddIfAbsent of one absent header both add); then all overwrites; then
// all additions, in configuration order.
func (m *HeaderMutation) Apply(h http.Header) {
	if m == nil {
		return
	}
	for _, k := range m.removeKeys {
		delete(h, k)
	}
	var overwrite, appendix []*HeaderValue
	for i := range m.Add {
		v := &m.Add[i]
		if v.Value == "" && !v.KeepEmpty {
			continue
		}
		switch v.Action {
		case AppendIfExistsOrAdd:
			appendix = append(appendix, v)
		case AddIfAbsent:
			if len(h[v.key]) == 0 {
				appendix = append(appendix, v)
			}
		case OverwriteIfExists:
			if len(h[v.key]) == 0 {
				continue
			}
			overwrite = append(overwrite, v)
		case OverwriteIfExistsOrAdd:
			overwrite = append(overwrite, v)
		}
	}
	for _, v := range overwrite {
		h[v.key] = []string{v.Value}
	}
	for _, v := range appendix {
		h[v.key] = append(h[v.key], v.Value)
	}
}

// HeaderMutations are the levels to apply, in Envoy's order: by default the
// most specific level first (weighted cluster, route, virtual host, route
// configuration), so that a less specific overwrite wins. When the route
// configuration sets most_specific_header_mutations_wins, route, virtual
// host and route configuration are reversed; a weighted cluster's level
// still comes first.
type HeaderMutations []*HeaderMutation

// Apply applies every level in order.
func (ms HeaderMutations) Apply(h http.Header) {
	for _, m := range ms {
		m.Apply(h)
	}
}
