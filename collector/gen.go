package collector

// The BPF object and its Go bindings are committed, so a plain `go build`
// needs no clang. `make generate` rebuilds them, byte for byte, with
// Debian's clang-14 and llvm-strip-14, and the headers vendored in
// bpf/headers/ alone (-nostdinc): nothing of the host's is read.
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -cflags "-O2 -g -Wall -Werror -nostdinc" -target bpfel -type event -type caller -type stat -type outcome -type kind -type payload_event -type header -type limit connect ../bpf/connect.c -- -I../bpf/headers
