/**
 * The root program: converges the host described by a host file (config `hostFile`, default `host.yaml` next to
 * Pulumi.yaml). The file's `connection` names an SSH host; without one the host is the machine running `pulumi`.
 *
 *   npm ci && npm run build
 *   pulumi login --local && pulumi stack init dev
 *   pulumi-vfio init -o host.yaml      # or write it by hand (schema/host.schema.json)
 *   pulumi preview && pulumi up
 *
 * Secrets for the SSH connection never go in the file: use an ssh-agent, the file's `privateKeyFile`, or
 * `pulumi config set --secret sshPrivateKey < key` / `pulumi config set --secret sshPassword ...`.
 */
import * as fs from "fs";
import * as path from "path";
import * as pulumi from "@pulumi/pulumi";
import { HostDefinitionError, VfioHost, loadHostDefinition } from "../sdk";

/** Where Pulumi.yaml is: Pulumi's root directory when it gave one, else the working directory. */
function projectDir(): string {
    const root = pulumi.getRootDirectory();
    return path.isAbsolute(root) && fs.existsSync(root) ? root : process.cwd();
}

const config = new pulumi.Config();
const hostFile = path.resolve(projectDir(), config.get("hostFile") ?? "host.yaml");

let host: VfioHost;
try {
    const definition = loadHostDefinition(hostFile);
    const privateKey = config.getSecret("sshPrivateKey");
    const password = config.getSecret("sshPassword");
    const secrets = definition.connection && (privateKey || password) ? { connection: { ...(privateKey ? { privateKey } : {}), ...(password ? { password } : {}) } } : {};
    host = new VfioHost(definition.name!, definition, secrets);
} catch (e) {
    // A bad host file is the user's to fix: show the positions, not a stack trace.
    if (e instanceof HostDefinitionError || (e as Error).message?.startsWith("cannot read")) throw new pulumi.RunError((e as Error).message);
    throw e;
}

/** Each VM's QEMU command line, by name under `vms`. */
export const vms = host.vmCommandLines;
/** Each binding's /dev/vfio/<group>, by name under `bindings`. */
export const vfioDevices = host.vfioDevices;
/** The resources converged, by name. */
export const resources = host.plan.resources.map((r) => `${r.type} ${r.name}`);
