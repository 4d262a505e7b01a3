package xdsclient

import (
	"encoding/json"
	"errors"
)

// statusJSON is Status as JSON: an error has no JSON form of its own, so
// LastError travels as its message.
type statusJSON struct {
	Connected bool         `json:"connected"`
	LastError string       `json:"lastError,omitempty"`
	Types     []TypeStatus `json:"types"`
}

// MarshalJSON renders LastError as its message.
func (s Status) MarshalJSON() ([]byte, error) {
	j := statusJSON{Connected: s.Connected, Types: s.Types}
	if s.LastError != nil {
		j.LastError = s.LastError.Error()
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads what MarshalJSON wrote; LastError comes back as an
// error with the same message.
func (s *Status) UnmarshalJSON(b []byte) error {
	var j statusJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*s = Status{Connected: j.Connected, Types: j.Types}
	if j.LastError != "" {
		s.LastError = errors.New(j.LastError)
	}
	return nil
}
