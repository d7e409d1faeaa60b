// fktools: the one static binary of the real-node lane's test images (FROM scratch).
//
//	fktools pause          sleep until SIGTERM/SIGINT (the pod sandbox's pause process)
//	fktools memhog MIB     touch MIB mebibytes, then sleep (exceeds a memory limit on purpose)
//	fktools get URL        HTTP GET; print the status line and body; exit 0 only on 200
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func pause() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
}

func memhog(arg string) {
	mib, err := strconv.Atoi(arg)
	if err != nil || mib <= 0 {
		fmt.Fprintf(os.Stderr, "memhog: %q is not a positive number of MiB\n", arg)
		os.Exit(2)
	}
	chunks := make([][]byte, 0, mib)
	for i := 0; i < mib; i++ {
		b := make([]byte, 1<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		chunks = append(chunks, b)
		if i%16 == 0 {
			fmt.Printf("memhog: %d MiB\n", i)
		}
	}
	fmt.Printf("memhog: holding %d MiB\n", len(chunks))
	pause()
}

func get(url string) {
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Fprintf(os.Stderr, "get %s: %v\n", url, err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Printf("%s\n%s\n", resp.Status, body)
	if resp.StatusCode != http.StatusOK {
		os.Exit(1)
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: fktools pause | memhog MIB | get URL")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "pause":
		pause()
	case "memhog":
		if len(os.Args) != 3 {
			fmt.Fprintln(os.Stderr, "usage: fktools memhog MIB")
			os.Exit(2)
		}
		memhog(os.Args[2])
	case "get":
		if len(os.Args) != 3 {
			fmt.Fprintln(os.Stderr, "usage: fktools get URL")
			os.Exit(2)
		}
		get(os.Args[2])
	default:
		fmt.Fprintf(os.Stderr, "fktools: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}
