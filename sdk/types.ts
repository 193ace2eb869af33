import type * as command from "@pulumi/command";

/**
 * How to reach a host over SSH: the same shape as @pulumi/command's `remote.ConnectionArgs` (host, port, user,
 * password, privateKey, privateKeyPassword, agentSocketPath, hostKey, perDialTimeout, dialErrorLimit), without
 * the bastion `proxy`. Absent: the machine that runs `pulumi`. The whole value is stored as a secret.
 *
 * Defaults: port 22, user `root` (other users need passwordless sudo), perDialTimeout 15 s, dialErrorLimit 10.
 * A `hostKey` (`ssh-ed25519 AAAA...` or `SHA256:...`) is verified when given.
 */
export type ConnectionArgs = Omit<command.types.input.remote.ConnectionArgs, "proxy">;
