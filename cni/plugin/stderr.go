package plugin

import "os"

// stderr is where the plugin leaves notes for the runtime's log.
var stderr = os.Stderr
