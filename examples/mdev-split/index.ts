/**
 * One GPU shared by several VMs, LibVF.IO style: every VM gets a mediated device (a vGPU) chosen by video memory
 * rather than by a vendor-specific type name, so the same program works for NVIDIA vGPU (mdev types, or vGPU 17+
 * on SR-IOV VFs), Intel GVT-g and any other mdev driver.
 *
 * Each vGPU is the smallest type with at least `vramMiB` MiB that still has room on the GPU (its UUID is stable per
 * stack and name, so a retried `up` adopts it instead of leaking another). Each VM depends on its vGPU and is replaced
 * with it: changing `vramMiB` stops the VM, recreates the vGPU and starts the VM again.
 */
import * as pulumi from "@pulumi/pulumi";
import * as vfio from "pulumi-vfio";

const config = new pulumi.Config();
const gpu = config.get("gpu") ?? "0000:41:00.0";
const vramMiB = config.getNumber("vramMiB") ?? 4096;
const names = config.getObject<string[]>("vms") ?? ["alice", "bob", "carol"];

// The IOMMU on at the next boot (vGPU drivers want it; reboot by hand while the BootConfig's pendingReboot is true).
const definition: vfio.HostDefinition = { bootConfig: { kernelParameters: ["intel_iommu=on", "iommu=pt"] }, mdevs: {}, vms: {} };
for (const name of names) {
    definition.mdevs![`${name}-vgpu`] = { parent: gpu, vram: { min: vramMiB, max: vramMiB * 2 } };
    definition.vms![name] = {
        cpu: { cores: 4 },
        memoryMb: 8192,
        firmware: { code: "/usr/share/OVMF/OVMF_CODE_4M.fd", vars: "/usr/share/OVMF/OVMF_VARS_4M.fd" },
        disks: [`/var/lib/vms/${name}.qcow2`],
        mdevs: [`${name}-vgpu`],
    };
}

const host = new vfio.VfioHost("vgpu-host", definition);

export const vmCommandLines = host.vmCommandLines;
export const vgpus = pulumi.all(names.map((n) => (host.resources[`vgpu-host-${n}-vgpu`] as vfio.MdevInstance).typeName));
