package client

// NoResourcesHint is what the CLI and the desktop app tell a user whom the node answered with no
// resources: nothing is granted to them yet, and who can change that.
func NoResourcesHint(user string) string {
	return "No resources are granted to " + user + " yet: ask a Ferry administrator to grant one of your roles a resource."
}
