package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// wildcard is the explicit wildcard subscription of delta xDS.
const wildcard = "*"

var errServerClosed = errors.New("control plane closed the stream")

// serve runs one stream until it fails or ctx ends. delivered reports
// whether the stream brought at least one response, which is what resets
// the backoff.
func (c *Client) serve(ctx context.Context) (delivered bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // tears the stream down on every return
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(c.cfg.Conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return false, fmt.Errorf("open delta ADS stream: %w", err)
	}
	// Names asked for on demand since the last stream (or during its
	// outage) ride with the new stream's subscriptions.
	demanded := c.demandedNames()
	for i, t := range c.cfg.Types {
		req := &discoveryv3.DeltaDiscoveryRequest{
			TypeUrl:                 t,
			ResourceNamesSubscribe:  []string{wildcard},
			InitialResourceVersions: c.heldVersions(t),
		}
		if i == 0 {
			req.Node = c.cfg.Node
		}
		if names := demanded[t]; len(names) > 0 {
			slices.Sort(names)
			req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, names...)
		}
		if err := c.send(stream, req); err != nil {
			return false, fmt.Errorf("subscribe to %s: %w", t, sendErr(stream, err))
		}
	}
	c.mu.Lock()
	c.connected = true
	c.stream = stream
	c.mu.Unlock()
	// A Demand made while the subscriptions went out found no stream to
	// send on: send it now.
	for t, names := range c.demandedNames() {
		var late []string
		for _, n := range names {
			if !slices.Contains(demanded[t], n) {
				late = append(late, n)
			}
		}
		if len(late) > 0 {
			if err := c.send(stream, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResourceNamesSubscribe: late}); err != nil {
				return false, fmt.Errorf("subscribe to %s on demand: %w", t, sendErr(stream, err))
			}
		}
	}
	defer func() {
		c.mu.Lock()
		c.stream = nil
		c.mu.Unlock()
	}()
	c.log.Info("xds: stream to the control plane open", "types", c.cfg.Types)
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return delivered, errServerClosed
		}
		if err != nil {
			return delivered, fmt.Errorf("receive: %w", err)
		}
		delivered = true
		if err := c.send(stream, c.handle(resp)); err != nil {
			return delivered, fmt.Errorf("answer %s nonce %s: %w", resp.GetTypeUrl(), resp.GetNonce(), sendErr(stream, err))
		}
	}
}

// sendErr turns Send's io.EOF, which means "the stream is gone, Recv knows
// why", into that reason.
func sendErr(stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, err error) error {
	if !errors.Is(err, io.EOF) {
		return err
	}
	if _, rerr := stream.Recv(); rerr != nil && !errors.Is(rerr, io.EOF) {
		return rerr
	}
	return errServerClosed
}

// handle applies one response and returns its ACK or NACK.
func (c *Client) handle(resp *discoveryv3.DeltaDiscoveryResponse) *discoveryv3.DeltaDiscoveryRequest {
	typeURL, nonce := resp.GetTypeUrl(), resp.GetNonce()
	c.mu.Lock()
	ts := c.types[typeURL]
	c.mu.Unlock()
	if ts == nil {
		// A server bug: nothing of it reaches the handler.
		c.log.Warn("xds: NACK of a response of a type not subscribed", "type", typeURL, "nonce", nonce)
		return reply(typeURL, nonce, map[string]error{typeURL: errUnsubscribed})
	}

	updated, removed, rejected := changes(resp)
	for name, err := range c.cfg.Handler.Apply(typeURL, updated, removed) {
		if err != nil {
			rejected[name] = err
		}
	}

	c.mu.Lock()
	record(ts.held, updated, removed, rejected)
	if len(rejected) == 0 {
		ts.ackedNonce = nonce
	} else {
		ts.nackedNonce, ts.nackMessage = nonce, nackMessage(rejected)
	}
	if !ts.synced {
		ts.synced = true
		c.unsynced--
		if c.unsynced == 0 {
			close(c.synced)
		}
	}
	c.mu.Unlock()

	if len(rejected) > 0 {
		c.log.Warn("xds: NACK", "type", typeURL, "nonce", nonce, "rejected", rejectedNames(rejected),
			"reason", nackMessage(rejected))
	} else {
		c.log.Debug("xds: ACK", "type", typeURL, "nonce", nonce, "updated", len(updated), "removed", len(removed))
	}
	return reply(typeURL, nonce, rejected)
}
