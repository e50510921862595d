package collector

// The BPF object and its Go bindings are committed, so a plain `go build`
// needs no clang. `make generate` rebuilds them with the pinned flags.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type event -type caller -type stat -type outcome -type kind -type payload_event -type header -type limit connect ../bpf/connect.c -- -I../bpf/headers -I/usr/include/x86_64-linux-gnu
