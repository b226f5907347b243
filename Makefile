# Convenience targets; the README's commands are the reference.
.PHONY: demo test build node

demo:
	go run ./cmd/ferry-demo

test:
	go test ./...

build:
	go build -o bin/ferry .
	CGO_ENABLED=0 go build -o bin/ferry-node ./cmd/ferry-node
