import type * as command from "@pulumi/command";
import type * as pulumi from "@pulumi/pulumi";

/**
 * How to reach a host over SSH: the same shape as @pulumi/command's `remote.ConnectionArgs` (host, port, user,
 * password, privateKey, privateKeyPassword, agentSocketPath, hostKey, perDialTimeout, dialErrorLimit), without
 * the bastion `proxy`. Absent: the machine that runs `pulumi`. The whole value is stored as a secret.
 *
 * Defaults: port 22, user `root` (other users need passwordless sudo), perDialTimeout 15 s, dialErrorLimit 10.
 * A `hostKey` (`ssh-ed25519 AAAA...` or `SHA256:...`) is the only key accepted when given; without it the host key
 * must be listed in ~/.ssh/known_hosts or /etc/ssh/ssh_known_hosts, as for ssh. Fields left out come from
 * ~/.ssh/config (`Host` aliases, HostName, Port, User, IdentityFile); with no key or password, the ssh-agent and
 * ~/.ssh/id_* are tried.
 */
export type ConnectionArgs = Omit<command.types.input.remote.ConnectionArgs, "proxy"> & {
    /**
     * How the host key is checked when `hostKey` is absent: `"known-hosts"` (default) refuses a key that
     * ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts do not list for the host, or list as changed or `@revoked`,
     * with its SHA256 fingerprint and the fix. `"insecure-skip"` accepts any key: anyone between this machine and
     * the host can impersonate it and gets root there; only for throwaway hosts.
     */
    hostKeyCheck?: pulumi.Input<"known-hosts" | "insecure-skip">;
};
