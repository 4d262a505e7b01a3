package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// The local mesh: `zmeshctl local up -f DIR` runs a directory of
// Kubernetes, Istio and Gateway API YAML on the mesh `make demo` runs,
// with no cluster: nodes as network namespaces, zmeshd, a zmesh-cni-agent
// and a ztunnel per node, waypoints, and pods running the test app. The
// work is done by zmesh-local (the demo's binary, e2e/demo, with -mesh),
// which links the node runner and the test network; zmeshctl finds it and
// the mesh's binaries, runs it, and reads its session file.

// localBinaries are the programs a local mesh runs.
var localBinaries = []string{"zmesh-local", "zmeshd", "ztunnel", "zmesh-cni-agent", "zmesh-cni", "waypoint"}

// localPackages are their packages, for go build from a checkout.
var localPackages = map[string]string{
	"zmesh-local": "./e2e/demo", "zmeshd": "./cmd/zmeshd", "ztunnel": "./cmd/ztunnel",
	"zmesh-cni-agent": "./cmd/zmesh-cni-agent", "zmesh-cni": "./cmd/zmesh-cni", "waypoint": "./cmd/waypoint",
}

const defaultSession = "/run/zmesh-local/session.json"

// localSession is the session file zmesh-local writes (its Session type).
type localSession struct {
	Pid     int    `json:"pid"`
	Input   string `json:"input"`
	Dir     string `json:"dir"`
	Zmeshd  string `json:"zmeshd"`
	Objects []struct {
		Group     string `json:"group,omitempty"`
		Kind      string `json:"kind"`
		Namespace string `json:"namespace,omitempty"`
		Name      string `json:"name"`
		File      string `json:"file"`
		Doc       int    `json:"doc"`
		Rejected  string `json:"rejected,omitempty"`
		Note      string `json:"note,omitempty"`
	} `json:"objects"`
	Pods []struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
		Node      string `json:"node"`
		IP        string `json:"ip"`
		NetNS     string `json:"netns"`
		Ambient   bool   `json:"ambient"`
		Owner     string `json:"owner,omitempty"`
	} `json:"pods"`
	Waypoints []struct {
		Namespace string `json:"namespace"`
		Gateway   string `json:"gateway"`
		Node      string `json:"node"`
		IP        string `json:"ip"`
		// Rejected is why the local runner refuses the Gateway, as the
		// deployer's Accepted=False condition says it.
		Rejected string `json:"rejected,omitempty"`
	} `json:"waypoints"`
}

// statusCondition is one condition of zmeshd's /debug/statusz.
type statusCondition struct {
	Parent  string `json:"parent,omitempty"`
	Type    string `json:"type"`
	Status  bool   `json:"status"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

type statusObject struct {
	Group      string            `json:"group,omitempty"`
	Kind       string            `json:"kind"`
	Namespace  string            `json:"namespace,omitempty"`
	Name       string            `json:"name"`
	Conditions []statusCondition `json:"conditions"`
}

func (c *cli) localCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "local",
		Short: "Run your own Kubernetes/Istio YAML on a local mesh, no cluster (root)",
		Long: help(`
Run a directory of Kubernetes, Istio and Gateway API YAML on a mesh on this
machine, with no cluster: two nodes as network namespaces, zmeshd, a
zmesh-cni-agent and a ztunnel per node, a waypoint per istio-waypoint
Gateway, and every pod running zmesh's test app (an echo server on its
containerPorts, whatever its image). It needs root.`),
	}
	cmd.AddCommand(c.localUpCommand(), c.localStatusCommand(), c.localExecCommand())
	return cmd
}

func (c *cli) localUpCommand() *cobra.Command {
	var dir, bin, session string
	cmd := &cobra.Command{
		Use:   "up -f DIR",
		Short: "Run DIR's YAML on a local mesh until Ctrl-C",
		Long: help(`
Apply DIR's YAML as an API server with its controllers would (Deployments,
ReplicaSets, StatefulSets and DaemonSets become pods; pods with no
spec.nodeName are scheduled round robin over the nodes and given addresses of
the node's pod range; Services with no clusterIP get one; kinds zmesh does not
act on are stored silently; what an API server would refuse is refused) and
run it. Namespaces labelled istio.io/dataplane-mode=ambient are captured.
It stays up until Ctrl-C, then removes everything it made.

The mesh's binaries (zmesh-local, zmeshd, ztunnel, zmesh-cni-agent,
zmesh-cni, waypoint) come from --bin, else from zmeshctl's own directory
(make build puts them together), else, run from a checkout of zmesh with Go
installed, they are built into a temporary directory.`),
		Example: "  sudo zmeshctl local up -f samples/bookinfo/\n  sudo zmeshctl local status",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return usagef("want -f DIR")
			}
			return c.localUp(cmd.Context(), dir, bin, session)
		},
	}
	cmd.Flags().StringVarP(&dir, "filename", "f", "", "directory of YAML to run")
	cmd.Flags().StringVar(&bin, "bin", "", "directory holding the mesh's binaries")
	cmd.Flags().StringVar(&session, "session", defaultSession, "session file, read by local status and local exec")
	return cmd
}

func (c *cli) localStatusCommand() *cobra.Command {
	var session string
	var out format
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Each object's Accepted/Rejected condition, and where pods run",
		Long: help(`
Show every object of the running local mesh's YAML with what an API server's
status would show: Rejected with the reason when the API server would have
refused it or zmeshd found a problem in it (its conditions, as zmeshd writes
them to objects in a cluster), Accepted otherwise; then the pods and
waypoints with their node, address and network namespace.`),
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.localStatus(cmd.Context(), session, out)
		},
	}
	cmd.Flags().StringVar(&session, "session", defaultSession, "session file of the local mesh")
	addOutputFlag(cmd.Flags(), &out)
	return cmd
}

func (c *cli) localExecCommand() *cobra.Command {
	var session string
	cmd := &cobra.Command{
		Use:   "exec POD|deploy/NAME -- COMMAND [ARG...]",
		Short: "Run a command in a pod's network namespace",
		Long: help(`
Run a host command (curl, say) in a local pod's network namespace, as
kubectl exec would in its container: its traffic is the pod's, captured by
the mesh, and Service names resolve as cluster DNS would resolve them.
POD is a pod's name, or deploy/NAME for a Deployment's first pod.`),
		Example: "  sudo zmeshctl local exec deploy/curl -- curl -s http://productpage:9080/productpage",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 || cmd.ArgsLenAtDash() != 1 {
				return usagef("want POD -- COMMAND")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.localExec(cmd.Context(), session, args[0], args[1:])
		},
	}
	cmd.Flags().StringVar(&session, "session", defaultSession, "session file of the local mesh")
	return cmd
}

func (c *cli) localUp(ctx context.Context, dir, binFlag, session string) error {
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("-f %s: not a directory", dir)
	}
	if os.Geteuid() != 0 {
		return errors.New("a local mesh creates network namespaces and loads eBPF programs: run it as root (sudo zmeshctl local up …)")
	}
	self, _ := os.Executable()
	cwd, _ := os.Getwd()
	bin, build, err := findLocalBinaries(binFlag, filepath.Dir(self), cwd)
	if err != nil {
		return err
	}
	if build != "" {
		tmp, err := os.MkdirTemp("", "zmesh-local-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		fmt.Fprintf(c.stderr, "building %s from %s (go build)\n", strings.Join(localBinaries, ", "), build)
		if err := goBuild(ctx, build, tmp); err != nil {
			return err
		}
		bin = tmp
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	run := exec.Command(filepath.Join(bin, "zmesh-local"), "-mesh", abs, "-bin", bin, "-session", session)
	run.Stdout, run.Stderr = c.stdout, c.stderr
	if err := run.Start(); err != nil {
		return fmt.Errorf("start zmesh-local: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- run.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		// Ctrl-C: zmesh-local removes everything; we wait for it. (At a
		// terminal it got the signal too; a second is harmless.)
		run.Process.Signal(syscall.SIGINT)
		err = <-done
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ee.ExitCode() == 130 && ctx.Err() != nil {
			return nil // interrupted while starting, and cleaned up
		}
		return fmt.Errorf("the local mesh failed (exit status %d): see its output above", ee.ExitCode())
	}
	return err
}

// findLocalBinaries says where the mesh's binaries are: in binFlag if
// given (all of them, or an error), else in zmeshctl's own directory,
// else build says the checkout to build them from (a directory whose
// go.mod is zmesh's, at or above cwd).
func findLocalBinaries(binFlag, selfDir, cwd string) (bin, build string, err error) {
	missing := func(dir string) []string {
		var out []string
		for _, b := range localBinaries {
			if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
				out = append(out, b)
			}
		}
		return out
	}
	if binFlag != "" {
		if m := missing(binFlag); len(m) > 0 {
			return "", "", fmt.Errorf("--bin %s lacks %s", binFlag, strings.Join(m, ", "))
		}
		return binFlag, "", nil
	}
	if selfDir != "" && len(missing(selfDir)) == 0 {
		return selfDir, "", nil
	}
	for d := cwd; d != ""; {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil {
			if strings.HasPrefix(string(b), "module github.com/zmesh/zmesh\n") {
				if _, err := exec.LookPath("go"); err != nil {
					return "", "", fmt.Errorf("the mesh's binaries are not beside zmeshctl (%s), and building them from %s needs Go: %w", selfDir, d, err)
				}
				return "", d, nil
			}
			break // another module
		}
		parent := filepath.Dir(d)
		if parent == d {
			break
		}
		d = parent
	}
	return "", "", fmt.Errorf("the local mesh's binaries (%s) are not beside zmeshctl (%s lacks %s): give --bin DIR, put them there (make build does), or run zmeshctl from a checkout of zmesh with Go installed",
		strings.Join(localBinaries, ", "), selfDir, strings.Join(missing(selfDir), ", "))
}

func goBuild(ctx context.Context, module, out string) error {
	for _, b := range localBinaries {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(out, b), localPackages[b])
		cmd.Dir = module
		if o, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", localPackages[b], err, o)
		}
	}
	return nil
}

// readSession reads a live session's file.
func readSession(path string) (*localSession, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no local mesh is up (no session file %s): start one with zmeshctl local up -f DIR", path)
	}
	if err != nil {
		return nil, err
	}
	var s localSession
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("session file %s: %w", path, err)
	}
	if s.Pid <= 0 || syscall.Kill(s.Pid, 0) != nil {
		return nil, fmt.Errorf("the local mesh of %s (pid %d) is gone", path, s.Pid)
	}
	return &s, nil
}

// localObjectStatus is one row of local status.
type localObjectStatus struct {
	Kind       string            `json:"kind"`
	Group      string            `json:"group,omitempty"`
	Namespace  string            `json:"namespace,omitempty"`
	Name       string            `json:"name"`
	File       string            `json:"file"`
	Status     string            `json:"status"`
	Reason     string            `json:"reason,omitempty"`
	Message    string            `json:"message,omitempty"`
	Conditions []statusCondition `json:"conditions,omitempty"`
}

func (c *cli) localStatus(ctx context.Context, path string, out format) error {
	s, err := readSession(path)
	if err != nil {
		return err
	}
	var judged []statusObject
	if err := getJSON(ctx, "http://"+s.Zmeshd+"/debug/statusz", &judged); err != nil {
		return fmt.Errorf("zmeshd of the local mesh: %w", err)
	}
	rows := localStatuses(s, judged)
	if out != "" {
		return out.write(c.stdout, map[string]any{"objects": rows, "pods": s.Pods, "waypoints": s.Waypoints})
	}
	t := table{header: []string{"KIND", "NAMESPACE", "NAME", "STATUS", "REASON", "MESSAGE"}}
	for _, r := range rows {
		t.rows = append(t.rows, []string{r.Kind, orDash(r.Namespace), r.Name, r.Status, orDash(r.Reason), orDash(r.Message)})
	}
	if err := t.write(c.stdout); err != nil {
		return err
	}
	fmt.Fprintln(c.stdout)
	p := table{header: []string{"POD", "NODE", "IP", "NETNS", "AMBIENT", "OWNER"}}
	for _, pod := range s.Pods {
		p.rows = append(p.rows, []string{pod.Namespace + "/" + pod.Name, pod.Node, pod.IP, pod.NetNS, fmt.Sprint(pod.Ambient), orDash(pod.Owner)})
	}
	for _, w := range s.Waypoints {
		if w.IP != "" {
			p.rows = append(p.rows, []string{w.Namespace + "/" + w.Gateway + " (waypoint)", w.Node, w.IP, "-", "-", "Gateway/" + w.Gateway})
		}
	}
	return p.write(c.stdout)
}

// localStatuses joins the input's objects with zmeshd's conditions: an
// object is Rejected when the API server would have refused it, or when a
// condition zmeshd gives it is False; Accepted otherwise.
func localStatuses(s *localSession, judged []statusObject) []localObjectStatus {
	type key struct{ group, kind, ns, name string }
	conds := map[key][]statusCondition{}
	for _, o := range judged {
		conds[key{o.Group, o.Kind, o.Namespace, o.Name}] = o.Conditions
	}
	var rows []localObjectStatus
	for _, o := range s.Objects {
		r := localObjectStatus{Kind: o.Kind, Group: o.Group, Namespace: o.Namespace, Name: o.Name, File: fmt.Sprintf("%s#%d", o.File, o.Doc), Status: "Accepted"}
		if o.Rejected != "" {
			r.Status, r.Reason, r.Message = "Rejected", "Invalid", o.Rejected
			rows = append(rows, r)
			continue
		}
		r.Conditions = conds[key{o.Group, o.Kind, o.Namespace, o.Name}]
		r.Message = o.Note
		for _, c := range r.Conditions {
			what := c.Type
			if c.Parent != "" {
				what = c.Parent + ": " + c.Type
			}
			if !c.Status {
				if r.Status == "Accepted" {
					r.Status, r.Reason, r.Message = "Rejected", c.Reason, ""
				}
				r.Message = joinMsg(r.Message, what+"=False: "+c.Message)
			}
		}
		if o.Group == "gateway.networking.k8s.io" && o.Kind == "Gateway" {
			for _, w := range s.Waypoints {
				if w.Namespace != o.Namespace || w.Gateway != o.Name {
					continue
				}
				if w.Rejected != "" {
					msg := w.Rejected
					if w.IP != "" {
						msg += fmt.Sprintf(" (the waypoint of its last good version keeps running on %s at %s)", w.Node, w.IP)
					}
					if r.Status == "Accepted" {
						r.Status, r.Reason, r.Message = "Rejected", "Invalid", ""
					}
					r.Message = joinMsg(r.Message, "Accepted=False: "+msg)
					r.Conditions = append(r.Conditions, statusCondition{Type: "Accepted", Status: false, Reason: "Invalid", Message: msg})
					continue
				}
				r.Conditions = append(r.Conditions, statusCondition{Type: "Programmed", Status: true, Reason: "Programmed",
					Message: fmt.Sprintf("waypoint running on %s at %s", w.Node, w.IP)})
			}
		}
		if r.Status == "Accepted" && len(r.Conditions) > 0 {
			c := r.Conditions[0]
			r.Reason, r.Message = c.Reason, c.Message
		}
		rows = append(rows, r)
	}
	return rows
}

func joinMsg(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func getJSON(ctx context.Context, url string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	return json.Unmarshal(b, v)
}

// localExec runs argv in the network namespace of the pod named by ref.
func (c *cli) localExec(ctx context.Context, path, ref string, argv []string) error {
	s, err := readSession(path)
	if err != nil {
		return err
	}
	netns := ""
	owner, isOwner := strings.CutPrefix(ref, "deploy/")
	if !isOwner {
		owner, isOwner = strings.CutPrefix(ref, "deployment/")
	}
	for _, p := range s.Pods {
		if (isOwner && p.Owner == "Deployment/"+owner) || (!isOwner && (p.Name == ref || p.Namespace+"/"+p.Name == ref)) {
			netns = p.NetNS
			break
		}
	}
	if netns == "" {
		return fmt.Errorf("no pod %s in the local mesh (zmeshctl local status lists them)", ref)
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", netns}, argv...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, c.stdout, c.stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s in %s: %w", argv[0], ref, err)
	}
	return nil
}
