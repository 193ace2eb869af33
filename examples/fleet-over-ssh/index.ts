/**
 * A fleet: every `hosts/<name>.yaml` is one machine reached over SSH (its `connection`), converged by one
 * `pulumi up`. Hosts are independent: Pulumi works on them in parallel, and each host's resources carry its
 * connection (stored as a secret).
 *
 * Credentials: an ssh-agent (SSH_AUTH_SOCK) by default, or `privateKeyFile` in a host file, or one key for all
 * hosts from config: `pulumi config set --secret sshPrivateKey < ~/.ssh/fleet_ed25519`.
 */
import * as fs from "fs";
import * as path from "path";
import * as pulumi from "@pulumi/pulumi";
import * as vfio from "pulumi-vfio";

const config = new pulumi.Config();
const dir = config.get("hostsDir") ?? "hosts";
const privateKey = config.getSecret("sshPrivateKey");

const files = fs
    .readdirSync(dir)
    .filter((f) => /\.ya?ml$/.test(f))
    .sort();

export const hosts: Record<string, pulumi.Output<Record<string, string[]>>> = {};
for (const file of files) {
    const definition = vfio.loadHostDefinition(path.join(dir, file));
    if (!definition.connection) throw new pulumi.RunError(`${path.join(dir, file)}: a fleet host needs a connection (host, user)`);
    const host = new vfio.VfioHost(definition.name!, definition, privateKey ? { connection: { privateKey } } : {});
    hosts[definition.name!] = host.vmCommandLines;
}
