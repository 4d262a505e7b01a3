package translate

// selectorIndex finds the items (Services, policies, ServiceEntries) whose
// label selector matches a pod, without trying every item of the namespace:
// each item is filed under one of its selector's key=value pairs (the
// smallest key), so a pod only tries the items filed under its own labels.
type selectorIndex[T any] struct {
	byPair map[labelPair][]selected[T]
	// every holds items with an empty selector, which select every pod.
	every []selected[T]
}

type labelPair struct{ key, value string }

type selected[T any] struct {
	selector map[string]string
	item     T
}

func (x *selectorIndex[T]) add(selector map[string]string, item T) {
	if len(selector) == 0 {
		x.every = append(x.every, selected[T]{selector, item})
		return
	}
	first := true
	var k string
	for key := range selector {
		if first || key < k {
			k, first = key, false
		}
	}
	if x.byPair == nil {
		x.byPair = map[labelPair][]selected[T]{}
	}
	p := labelPair{k, selector[k]}
	x.byPair[p] = append(x.byPair[p], selected[T]{selector, item})
}

// each calls fn for every item whose selector matches labels. The order
// depends on map iteration: callers sort what they collect.
func (x *selectorIndex[T]) each(labels map[string]string, fn func(T)) {
	if x == nil {
		return
	}
	for _, s := range x.every {
		fn(s.item)
	}
	if len(x.byPair) == 0 {
		return
	}
	for k, v := range labels {
		for _, s := range x.byPair[labelPair{k, v}] {
			if selects(s.selector, labels) {
				fn(s.item)
			}
		}
	}
}

// selects reports whether every key=value of selector is in labels.
func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}
