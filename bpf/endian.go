package bpf

import "encoding/binary"

// nativeEndian lays out address words as the kernel stores them, so a u32
// holding "network order" bytes compares equal in the program.
var nativeEndian = binary.NativeEndian
