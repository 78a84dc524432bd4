package driver

import (
	"sort"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// paginate picks the page [start, end) of n entries sorted by key. The
// token is the key of the first entry of the next page, so a page stays
// correct when entries before it are deleted between calls.
func paginate(n int, key func(int) string, token string, maxEntries int32, validKey func(string) bool) (start, end int, next string, err error) {
	if maxEntries < 0 {
		return 0, 0, "", errInvalid("max_entries %d is negative", maxEntries)
	}
	if token != "" {
		if !validKey(token) {
			return 0, 0, "", status.Errorf(codes.Aborted, "starting token %q is not valid", token)
		}
		start = sort.Search(n, func(i int) bool { return key(i) >= token })
	}
	end = n
	if maxEntries > 0 && start+int(maxEntries) < n {
		end = start + int(maxEntries)
		next = key(end)
	}
	return start, end, next, nil
}

func wrapInt64(v int64) *wrapperspb.Int64Value {
	if v <= 0 {
		return nil
	}
	return wrapperspb.Int64(v)
}
