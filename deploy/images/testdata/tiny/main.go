// Command tiny is the smallest program the image tests put in an image: it
// prints the version its build info records, as zmesh's binaries do.
package main

import (
	"fmt"

	"github.com/zmesh/zmesh/internal/version"
)

func main() { fmt.Println(version.Get()) }
