import type * as pulumi from "@pulumi/pulumi";

/**
 * How to reach a host over SSH. Absent: the machine that runs `pulumi`. The whole value is stored as a secret.
 *
 * Field for field the shape of @pulumi/command's `remote.ConnectionArgs` (same names, types and defaults), without
 * the bastion `proxy`, so a `remote.ConnectionArgs` value is accepted here as is. It is declared here rather than
 * imported so that installing pulumi-vfio does not install @pulumi/command, whose install script downloads a
 * Pulumi plugin we never use.
 *
 * A `hostKey` (`ssh-ed25519 AAAA...` or `SHA256:...`) is the only key accepted when given; without it the host key
 * must be listed in ~/.ssh/known_hosts or /etc/ssh/ssh_known_hosts, as for ssh. Fields left out come from
 * ~/.ssh/config (`Host` aliases, HostName, Port, User, IdentityFile); with no key or password, the ssh-agent and
 * ~/.ssh/id_* are tried. (A type, not an interface, so a value of it stays assignable to `Record<string, unknown>`
 * as it was when this was derived from @pulumi/command.)
 */
export type ConnectionArgs = {
    /** The host name or address to connect to. Required. */
    host: pulumi.Input<string>;
    /** The TCP port. Default 22. */
    port?: pulumi.Input<number>;
    /** The user to log in as. Default `root`; any other user needs passwordless `sudo` on the host. */
    user?: pulumi.Input<string>;
    /** The password, used when no private key is given. */
    password?: pulumi.Input<string>;
    /** The private key text (OpenSSH or PEM); takes precedence over the password. */
    privateKey?: pulumi.Input<string>;
    /** The passphrase of an encrypted private key. */
    privateKeyPassword?: pulumi.Input<string>;
    /** The ssh-agent socket path. Default: the `SSH_AUTH_SOCK` environment variable when set. */
    agentSocketPath?: pulumi.Input<string>;
    /** The expected host key (`ssh-ed25519 AAAA...`, as in known_hosts) or its `SHA256:...` fingerprint. */
    hostKey?: pulumi.Input<string>;
    /** Seconds for each dial attempt; 0 means no limit. Default 15. */
    perDialTimeout?: pulumi.Input<number>;
    /** Dial attempts before giving up; -1 means unlimited. Default 10. */
    dialErrorLimit?: pulumi.Input<number>;
    /**
     * How the host key is checked when `hostKey` is absent: `"known-hosts"` (default) refuses a key that
     * ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts do not list for the host, or list as changed or `@revoked`,
     * with its SHA256 fingerprint and the fix. `"insecure-skip"` accepts any key: anyone between this machine and
     * the host can impersonate it and gets root there; only for throwaway hosts. Not part of @pulumi/command's shape.
     */
    hostKeyCheck?: pulumi.Input<"known-hosts" | "insecure-skip">;
};
