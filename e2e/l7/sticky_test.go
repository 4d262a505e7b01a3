package l7

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"testing"
	"time"
)

// TestConsistentHash is session affinity on a header (l7-sticky-hash.yaml):
// with three ratings pods, the same x-user lands on one pod every time
// while different users are spread over the pods. Before the
// DestinationRule the waypoint balances each request of a kept-alive
// connection on its own, so one user reaches every pod.
func TestConsistentHash(t *testing.T) {
	t.Parallel()
	pods := withWaypoint(t, "l7-sticky.yaml", "sticky", 4)
	c := client(pods["client"])
	url := "http://" + serviceAddr(t, "sticky", "ratings", 9080).String() + "/"

	byPod := func(n int, user string) (map[string]int, error) {
		got := map[string]int{}
		h := http.Header{"X-User": {user}}
		for i := range n {
			code, e, err := get(c, url, h)
			if err != nil || code != http.StatusOK {
				return got, fmt.Errorf("request %d of %d as %s: %d %v", i+1, n, user, code, err)
			}
			got[e.Pod]++
		}
		return got, nil
	}

	until(t, 30*time.Second, "one user's requests answered by every pod", func() error {
		got, err := byPod(30, "alice")
		if err != nil {
			return err
		}
		if len(got) != 3 {
			return fmt.Errorf("answered by %v", got)
		}
		return nil
	})

	mesh.Apply(t, "l7-sticky-hash.yaml")
	until(t, 30*time.Second, "alice's requests held on one pod", func() error {
		got, err := byPod(30, "alice")
		if err != nil {
			return err
		}
		if len(got) != 1 {
			return fmt.Errorf("answered by %v", got)
		}
		return nil
	})

	// Twenty users, 100 requests each. With three pods, the chance that
	// every user hashes to the same one is 3 × 3⁻²⁰, about 10⁻⁹.
	users := map[string][]string{} // pod → users
	for i := range 20 {
		user := fmt.Sprintf("user-%02d", i)
		got, err := byPod(100, user)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 {
			t.Errorf("%s's 100 requests answered by %v, want one pod", user, got)
			continue
		}
		for pod := range got {
			users[pod] = append(users[pod], user)
		}
	}
	for _, pod := range slices.Sorted(maps.Keys(users)) {
		t.Logf("%s: %d users %v", pod, len(users[pod]), users[pod])
	}
	if len(users) < 2 {
		t.Errorf("20 users all on %v, want them spread over the 3 pods", slices.Collect(maps.Keys(users)))
	}
}
