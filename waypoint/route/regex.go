package route

import (
	"fmt"
	"regexp"
	"strings"
)

// CheckSubstitution validates an RE2 rewrite string for re as RE2 does:
// "\N" may name only groups that exist (\0 is the whole match), "\\" is a
// backslash, and no other escape is allowed.
func CheckSubstitution(re *regexp.Regexp, sub string) error {
	for i := 0; i < len(sub); i++ {
		if sub[i] != '\\' {
			continue
		}
		i++
		if i == len(sub) {
			return fmt.Errorf("substitution %q ends with a lone backslash", sub)
		}
		c := sub[i]
		switch {
		case c == '\\':
		case '0' <= c && c <= '9':
			if n := int(c - '0'); n > re.NumSubexp() {
				return fmt.Errorf("substitution %q uses group \\%d but the pattern has %d", sub, n, re.NumSubexp())
			}
		default:
			return fmt.Errorf("substitution %q has invalid escape \\%c", sub, c)
		}
	}
	return nil
}

// replaceAll replaces every non-overlapping match of the pattern in s by
// the substitution, expanding \0-\9 and \\ as RE2::GlobalReplace does.
func (r *RegexRewrite) replaceAll(s string) string {
	matches := r.Pattern.FindAllStringSubmatchIndex(s, -1)
	if matches == nil {
		return s
	}
	var b strings.Builder
	last := 0
	for _, m := range matches {
		b.WriteString(s[last:m[0]])
		sub := r.Substitution
		for i := 0; i < len(sub); i++ {
			if sub[i] != '\\' || i+1 == len(sub) {
				b.WriteByte(sub[i])
				continue
			}
			i++
			if sub[i] == '\\' {
				b.WriteByte('\\')
				continue
			}
			g := int(sub[i] - '0')
			if m[2*g] >= 0 {
				b.WriteString(s[m[2*g]:m[2*g+1]])
			}
		}
		last = m[1]
	}
	b.WriteString(s[last:])
	return b.String()
}
