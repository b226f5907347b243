package api_test

import (
	"context"
	"fmt"
	"net"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/resource"
)

// Example manages a resource with the Go SDK against a real node: create, list, update, delete. The
// client reaches the node's control API through an enrolled device's WireGuard tunnel (here the demo's
// client daemon; a program of your own would bring up package tunnel with its enrolled key).
func Example() {
	ctx := context.Background()
	// demo.Start, not testenv.Start: an example has no testing.T (and shows the plain API).
	env, err := demo.Start(ctx, demo.Options{NoResource: true})
	if err != nil {
		fmt.Println("start a node:", err)
		return
	}
	defer env.Close()
	c := api.NewClient(func(ctx context.Context, _, addr string) (net.Conn, error) {
		return env.Daemon.Dial(ctx, addr)
	}, 0)

	r := resource.New("azure-pg-mi-prod")
	r.Hostname = "mypg.postgres.database.azure.com"
	r.Database = "production"
	r.Username = "mi_user"
	r.ManagedIdentityClientID = "11111111-2222-3333-4444-555555555555"
	r.Tags = map[string]string{"env": "production"}
	created, err := c.AddDatasource(ctx, r)
	if err != nil {
		fmt.Println("add:", err)
		return
	}
	fmt.Println("created", created.Name, "at", created.LoopbackAddress)

	list, err := c.Datasources(ctx)
	if err != nil {
		fmt.Println("list:", err)
		return
	}
	fmt.Println("catalog holds", len(list.Datasources), "resource")

	created.PortOverride = 12345
	up, err := c.UpdateDatasource(ctx, created.Name, created)
	if err != nil {
		fmt.Println("update:", err)
		return
	}
	for _, ch := range up.Changes {
		fmt.Println("changed", ch)
	}

	if err := c.DeleteDatasource(ctx, created.Name); err != nil {
		fmt.Println("delete:", err)
		return
	}
	list, _ = c.Datasources(ctx)
	fmt.Println("catalog holds", len(list.Datasources), "resources")
	// Output:
	// created azure-pg-mi-prod at 127.0.0.1:10001
	// catalog holds 1 resource
	// changed port_override: "" -> 12345
	// changed loopback_address: 127.0.0.1:10001 -> 127.0.0.1:12345
	// catalog holds 0 resources
}

// Example_secretStore adds an Azure Key Vault secret store and a resource whose username and client
// ID the node reads from it with its managed identity; a store in use cannot be deleted.
func Example_secretStore() {
	ctx := context.Background()
	// demo.Start, not testenv.Start: an example has no testing.T (and shows the plain API).
	env, err := demo.Start(ctx, demo.Options{NoResource: true})
	if err != nil {
		fmt.Println("start a node:", err)
		return
	}
	defer env.Close()
	c := api.NewClient(func(ctx context.Context, _, addr string) (net.Conn, error) {
		return env.Daemon.Dial(ctx, addr)
	}, 0)

	st, err := c.AddSecretStore(ctx, resource.SecretStore{Name: "myvault", Type: resource.SecretStoreTypeAzureKeyVault,
		VaultURI: "https://myvault.vault.azure.net/"})
	if err != nil {
		fmt.Println("add store:", err)
		return
	}
	fmt.Println("store", st.Name, "has an se- ID:", st.ID[:3] == "se-")

	r := resource.New("azure-pg-mi-kv")
	r.Hostname = "mypg.postgres.database.azure.com"
	r.Database = "production"
	r.SecretStoreID = st.ID
	r.UsernamePath = "pg-login?key=user"
	r.ManagedIdentityClientIDPath = "pg-login?key=client"
	if _, err := c.AddDatasource(ctx, r); err != nil {
		fmt.Println("add resource:", err)
		return
	}
	err = c.DeleteSecretStore(ctx, st.ID)
	fmt.Println("delete while in use refused:", err != nil)
	// Output:
	// store myvault has an se- ID: true
	// delete while in use refused: true
}
