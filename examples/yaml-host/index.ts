/**
 * Converges the host described by host.yaml (config `hostFile`). A mistake in the file — a typo'd key, a wrong
 * type, a VM naming a binding that does not exist, two VMs claiming one GPU — fails `pulumi preview` with the
 * file, line and column, before anything on the host changes.
 */
import * as pulumi from "@pulumi/pulumi";
import * as vfio from "pulumi-vfio";

const config = new pulumi.Config();

let definition: vfio.HostDefinition;
try {
    definition = vfio.loadHostDefinition(config.get("hostFile") ?? "host.yaml");
} catch (e) {
    throw new pulumi.RunError((e as Error).message);
}
const host = new vfio.VfioHost(definition.name!, definition);

export const vms = host.vmCommandLines;
export const vfioDevices = host.vfioDevices;
