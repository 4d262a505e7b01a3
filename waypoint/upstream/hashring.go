package upstream

import (
	"cmp"
	"math"
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// ring is RING_HASH's consistent-hash ring (Ketama style, xxHash as Envoy
// uses by default): each host owns entries in proportion to its weight,
// and a request goes to the first entry at or after its hash. Adding or
// removing one host moves only the keys of that host's entries.
type ring struct {
	hashes []uint64
	hosts  []*Host
}

// maxRingEntries bounds a ring below Envoy's maximum_ring_size limit
// (8M entries, 128 MiB here, rebuilt on every ejection): endpoint weights
// can come from a ServiceEntry a namespace owner writes, and a ratio of
// 1 to 2^32 would otherwise ask for the largest ring allowed.
const maxRingEntries = 1 << 20

// newRing builds a ring over hosts with normalised weights w (summing to
// 1). As in Envoy, the lightest host gets at least its share of
// minSize entries and the ring has at most maxSize; unlike Envoy, the
// lightest host's count is rounded up to a power of two. Envoy's count,
// ceil(minSize/n) for n equal hosts, changes whenever a host comes or
// goes, and every other host's extra or missing entries then move keys
// between hosts that did not change (about 8% of all keys when 1 of 10
// hosts goes); rounded, the counts of the others stay put and only the
// changed host's keys move. The ring is at most twice Envoy's size.
func newRing(hosts []*Host, w []float64, minSize, maxSize uint64) *ring {
	minW := math.Inf(1)
	for _, v := range w {
		if v > 0 && v < minW {
			minW = v
		}
	}
	if math.IsInf(minW, 1) {
		return nil
	}
	lightest := math.Ceil(minW * float64(minSize))
	lightest = math.Pow(2, math.Ceil(math.Log2(lightest)))
	scale := math.Min(lightest/minW, float64(min(maxSize, maxRingEntries)))
	type entry struct {
		hash uint64
		host int
	}
	entries := make([]entry, 0, int(math.Ceil(scale))+len(hosts))
	var key []byte
	for i, h := range hosts {
		if w[i] <= 0 {
			continue
		}
		// Each host's count depends on its own weight only, so one
		// host's change leaves the others' entries as they were.
		n := max(1, int(math.Round(scale*w[i])))
		prefix := h.Endpoint.Addr.String() + "_"
		for j := range n {
			key = strconv.AppendInt(append(key[:0], prefix...), int64(j), 10)
			entries = append(entries, entry{xxhash.Sum64(key), i})
		}
	}
	// Ties (equal hashes) are broken by host order so that the ring does
	// not depend on the sort's stability.
	slices.SortFunc(entries, func(a, b entry) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		return cmp.Compare(a.host, b.host)
	})
	r := &ring{hashes: make([]uint64, len(entries)), hosts: make([]*Host, len(entries))}
	for i, e := range entries {
		r.hashes[i], r.hosts[i] = e.hash, hosts[e.host]
	}
	return r
}

func (r *ring) get(h uint64) *Host {
	i, _ := slices.BinarySearch(r.hashes, h)
	if i == len(r.hashes) {
		i = 0
	}
	return r.hosts[i]
}

// maglev is MAGLEV's lookup table (Eisenbud et al., "Maglev: A Fast and
// Reliable Software Network Load Balancer", weighted as Envoy weights it):
// each host fills table slots along its own permutation of the table, in
// turns, a host of half the largest weight taking a turn every second
// round. A request goes to the slot its hash names.
type maglev struct {
	table []uint32
	hosts []*Host
}

func newMaglev(hosts []*Host, w []float64, size uint64) *maglev {
	maxW := 0.0
	for _, v := range w {
		maxW = math.Max(maxW, v)
	}
	if maxW == 0 || size < 2 {
		return nil
	}
	type perm struct {
		offset, skip, next uint64
		target             float64
	}
	ps := make([]perm, len(hosts))
	for i, h := range hosts {
		k := xxhash.Sum64String(h.Endpoint.Addr.String())
		ps[i] = perm{offset: k % size, skip: mix(k, 0x6d61676c6576)%(size-1) + 1}
	}
	const empty = math.MaxUint32
	m := &maglev{table: make([]uint32, size), hosts: hosts}
	for i := range m.table {
		m.table[i] = empty
	}
	filled := uint64(0)
	for round := 0.0; filled < size; round++ {
		for i := range ps {
			if filled == size {
				break
			}
			p := &ps[i]
			if w[i] == 0 || round*w[i] < p.target {
				continue
			}
			p.target += maxW
			c := (p.offset + p.skip*p.next) % size
			for m.table[c] != empty {
				p.next++
				c = (p.offset + p.skip*p.next) % size
			}
			m.table[c] = uint32(i)
			p.next++
			filled++
		}
	}
	return m
}

func (m *maglev) get(h uint64) *Host {
	return m.hosts[m.table[h%uint64(len(m.table))]]
}
