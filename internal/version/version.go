// Package version reports a zmesh binary's version from its build info,
// for `zmeshctl version` and zmeshd's GET /version.
package version

import "runtime/debug"

// Info is a binary's version as its build info records it.
type Info struct {
	Version   string `json:"version"`
	Revision  string `json:"revision,omitempty"`
	Time      string `json:"time,omitempty"`
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"goVersion,omitempty"`
}

func (v Info) String() string {
	s := v.Version
	if v.Revision != "" {
		s += ", revision " + v.Revision
		if v.Modified {
			s += " (modified)"
		}
	}
	if v.Time != "" {
		s += ", commit time " + v.Time
	}
	if v.GoVersion != "" {
		s += ", " + v.GoVersion
	}
	return s
}

// Get reads the running binary's version.
func Get() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Info{Version: "unknown (no build info)"}
	}
	v := Info{Version: bi.Main.Version, GoVersion: bi.GoVersion}
	if v.Version == "" {
		v.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}
