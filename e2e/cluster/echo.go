package cluster

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/zmesh/zmesh/e2e/podapp"
)

// GetEcho sends one GET with header (nil for none) and decodes the test
// app's echo from a 200 answer; other answers give their code and no echo.
func GetEcho(c *http.Client, url string, header http.Header) (int, podapp.Echo, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, podapp.Echo{}, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, podapp.Echo{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, podapp.Echo{}, err
	}
	var e podapp.Echo
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, &e); err != nil {
			return resp.StatusCode, e, fmt.Errorf("reply %q: %w", b, err)
		}
	}
	return resp.StatusCode, e, nil
}

// CountVersions sends n GETs with header and counts the answering
// versions, stopping at the first error or non-200 answer.
func CountVersions(c *http.Client, url string, n int, header http.Header) (map[string]int, error) {
	got := map[string]int{}
	for i := range n {
		code, e, err := GetEcho(c, url, header)
		if err != nil || code != http.StatusOK {
			return got, fmt.Errorf("request %d of %d to %s: %d %v", i+1, n, url, code, err)
		}
		got[e.Version]++
	}
	return got, nil
}
