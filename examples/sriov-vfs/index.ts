/**
 * SR-IOV: one physical function (a NIC, an NVMe drive, an SR-IOV capable GPU) split into virtual functions, each
 * a PCI device with its own IOMMU group, handed to VMs.
 *
 * `pulumi up`: writes sriov_drivers_autoprobe=0 and sriov_numvfs (so the VFs come up without a host driver), binds
 * each VF a VM uses to vfio-pci, then starts the VMs. A VM names the VF it uses by `{from, index}`; two VMs cannot
 * claim one VF, and an index past the count fails at preview with the file position.
 */
import * as pulumi from "@pulumi/pulumi";
import * as vfio from "pulumi-vfio";

const config = new pulumi.Config();
const pf = config.get("physicalFunction") ?? "0000:03:00.0";
const count = config.getNumber("vfCount") ?? 4;

const vm = (index: number): vfio.VmEntry => ({
    cpu: { cores: 2 },
    memoryMb: 2048,
    disks: [`/var/lib/vms/worker-${index}.qcow2`],
    // The VF is the VM's only NIC (or disk controller): no emulated network.
    network: { mode: "none" },
    virtualFunctions: [{ from: "vfs", index }],
});

const host = new vfio.VfioHost("sriov-host", {
    // VFs reach a VM only through the IOMMU: on at the next boot (reboot by hand while boot.pendingReboot is true).
    bootConfig: { kernelParameters: ["intel_iommu=on", "iommu=pt"] },
    virtualFunctions: { vfs: { physicalFunction: pf, count } },
    vms: { "worker-0": vm(0), "worker-1": vm(1) },
});

export const vfAddresses = (host.resources["sriov-host-vfs"] as vfio.VirtualFunctions).addresses;
export const vmCommandLines = host.vmCommandLines;
