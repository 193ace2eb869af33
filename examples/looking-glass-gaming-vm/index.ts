/**
 * A two-GPU desktop: the host keeps its boot GPU, the second GPU (with its HDMI audio) goes to a Windows VM, and
 * Looking Glass shows the VM's screen in a window on the host through /dev/kvmfr0.
 *
 * What `pulumi up` does, in order: writes the boot configuration (intel_iommu=on iommu=pt, the GPU claimed for
 * vfio-pci at boot; takes effect at the next reboot), binds the GPU's IOMMU group to vfio-pci now, loads kvmfr with
 * a 64 MiB buffer (2560×1440) owned by the desktop user, then starts the VM with hugepages, OVMF, the GPU and the
 * IVSHMEM device. `pulumi destroy` stops the VM first, then gives the GPU back to its host driver.
 */
import * as pulumi from "@pulumi/pulumi";
import * as vfio from "pulumi-vfio";

const config = new pulumi.Config();

const gpu = config.get("gpu") ?? "0000:01:00.0";

const host = new vfio.VfioHost("gaming-rig", {
    // The boot half: the IOMMU on, and the GPU with its HDMI audio (function .1) claimed for vfio-pci at boot,
    // before the host's graphics and sound drivers load. `pendingReboot` stays true until you reboot.
    bootConfig: {
        kernelParameters: ["intel_iommu=on", "iommu=pt"],
        earlyBinding: [gpu, gpu.replace(/\.0$/, ".1")],
    },
    bindings: {
        // The address as `pulumi-vfio inventory` (or lspci) shows it. The boot GPU (boot_vga=1) is refused unless
        // allowBootVga is set: this host keeps its console on the other card.
        gpu: { device: gpu, persistent: true },
    },
    kvmfr: {
        // 2560×1440 SDR → 64 MiB (Looking Glass B7's formula). Needs the kvmfr module (Looking Glass's DKMS package).
        "looking-glass": { index: 0, width: 2560, height: 1440, owner: config.get("desktopUser") ?? "root" },
    },
    vms: {
        win11: {
            cpu: { cores: 6, threads: 2 },
            memoryMb: 16384,
            hugepages: true,
            firmware: { code: "/usr/share/OVMF/OVMF_CODE_4M.ms.fd", vars: "/usr/share/OVMF/OVMF_VARS_4M.ms.fd" },
            disks: [config.get("disk") ?? "/var/lib/vms/win11.qcow2"],
            devices: ["gpu"],
            sharedMemory: "looking-glass",
            // NVIDIA's "Error 43" on consumer cards: hide the hypervisor.
            hideHypervisor: true,
            autostart: true,
        },
    },
});

export const qemuCommandLine = host.vmCommandLines.apply((c) => c.win11);
export const vfioGroup = host.vfioDevices.apply((d) => d.gpu);
