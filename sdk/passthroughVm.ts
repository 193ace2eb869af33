import * as pulumi from "@pulumi/pulumi";
import type { HostDevice } from "../provider/qemu/cmdline";
import { IommuBinding } from "./iommuBinding";
import { MdevInstance } from "./mdevInstance";
import { secretConnection, thinProvider, withSecretConnection } from "./provider";
import { ConnectionArgs } from "./types";

export type { HostDevice };

/** A host PCI device to pass through. */
export interface PassthroughDeviceArgs {
    /** PCI address (`0000:01:00.0` or `01:00.0`). */
    address: pulumi.Input<string>;
    /** Exactly these functions; default every non-bridge function of the address's IOMMU group (GPU + HDMI audio). */
    functions?: pulumi.Input<pulumi.Input<string>[]>;
    /** `x-vga=on`: legacy VGA to this function (a primary GPU under SeaBIOS). */
    xVga?: pulumi.Input<boolean>;
    /** ROM file for this function (`romfile=`), e.g. a dumped vBIOS. */
    romfile?: pulumi.Input<string>;
}

/** A mediated device: an MdevInstance's outputs, or a UUID with its type. */
export interface MdevArgs {
    uuid: pulumi.Input<string>;
    /** The mdev type id (`nvidia-63`, `i915-GVTg_V5_4`); an NVIDIA type makes QEMU's `-uuid` the mdev's. */
    type?: pulumi.Input<string>;
    /** `display=on|off` of a display-capable mdev. */
    display?: pulumi.Input<boolean>;
    /** NVIDIA vGPU 17+ (no mdev bus): the VF that carries the vGPU, passed with `host=`. */
    address?: pulumi.Input<string>;
}

/** Looking Glass's IVSHMEM memory: a KvmfrDevice (its `path` and `sizeMb`), or a `/dev/shm` file. */
export interface SharedMemoryArgs {
    /** `/dev/kvmfrN` or `/dev/shm/<name>`. */
    path: pulumi.Input<string>;
    /** Size in MiB, a power of two; must equal the kvmfr device's. */
    sizeMb: pulumi.Input<number>;
}

export interface DiskArgs {
    path: pulumi.Input<string>;
    /** `raw` or `qcow2`; default from the extension. */
    format?: pulumi.Input<"raw" | "qcow2">;
    /** `virtio` (default), `sata` or `nvme`. */
    bus?: pulumi.Input<"virtio" | "sata" | "nvme">;
    readOnly?: pulumi.Input<boolean>;
}

export interface CpuArgs {
    /** QEMU CPU model. Default `host` (kvm) or `max` (tcg). */
    model?: pulumi.Input<string>;
    /** Default 1. */
    sockets?: pulumi.Input<number>;
    /** Default 2. */
    cores?: pulumi.Input<number>;
    /** Default 1. */
    threads?: pulumi.Input<number>;
    /** Host CPU of each vCPU, in vCPU order; applied with taskset to the threads `query-cpus-fast` names. */
    pinning?: pulumi.Input<pulumi.Input<number>[]>;
}

export interface NetworkArgs {
    /** `user` (default, NAT), `bridge` (qemu-bridge-helper) or `none`. */
    mode?: pulumi.Input<"user" | "bridge" | "none">;
    /** Host bridge for mode `bridge`, allowed in /etc/qemu/bridge.conf. */
    bridge?: pulumi.Input<string>;
    /** NIC model. Default `virtio-net-pci`. */
    model?: pulumi.Input<string>;
    /** MAC address. Default: stable per VM name. */
    mac?: pulumi.Input<string>;
}

export interface PassthroughVmArgs {
    /** VM name: letters, digits, `_`, `.`, `-` (it names /run/pulumi-vfio/vm/<name> and the systemd unit). */
    name: pulumi.Input<string>;
    /** Machine type. Default `q35`. */
    machine?: pulumi.Input<string>;
    /** `kvm` (default) or `tcg` (emulation, for tests or hosts without VT-x/AMD-V). */
    accel?: pulumi.Input<"kvm" | "tcg">;
    cpu?: pulumi.Input<CpuArgs>;
    /** Guest memory in MiB. Default 4096. */
    memoryMb?: pulumi.Input<number>;
    /** Back guest memory with preallocated hugepages (/dev/hugepages). Default false. */
    hugepages?: pulumi.Input<boolean>;
    /** UEFI: OVMF code and the VARS template, copied once per VM (0600). Absent: SeaBIOS. */
    firmware?: pulumi.Input<{ code: pulumi.Input<string>; vars: pulumi.Input<string> }>;
    disks?: pulumi.Input<pulumi.Input<string | DiskArgs>[]>;
    /** An ISO image. */
    cdrom?: pulumi.Input<string>;
    network?: pulumi.Input<NetworkArgs>;
    /**
     * Host PCI devices: IommuBinding resources (their bound functions pass through, and the VM depends on them, so it
     * is stopped before they are released), addresses, or device objects.
     */
    devices?: (IommuBinding | pulumi.Input<string | PassthroughDeviceArgs>)[];
    /** Mediated devices: MdevInstance resources, UUIDs, or `{uuid, type}`. */
    mdevs?: (MdevInstance | pulumi.Input<string | MdevArgs>)[];
    /** Looking Glass shared memory: a KvmfrDevice, or `{ path: "/dev/shm/looking-glass", sizeMb: 32 }`. */
    sharedMemory?: pulumi.Input<SharedMemoryArgs> | SharedMemoryArgs;
    /** The NVIDIA "Error 43" workaround: `kvm=off`; on KVM also `hv-vendor-id` with the Hyper-V enlightenments that make it effective (QEMU hyperv.rst; Proxmox's set) and `kernel_irqchip=on`. Default false. */
    hideHypervisor?: pulumi.Input<boolean>;
    /** Hyper-V vendor id shown with hideHypervisor (at most 12 characters). */
    hvVendorId?: pulumi.Input<string>;
    /** SMBIOS UUID. Default: an NVIDIA vGPU mdev's UUID (its driver needs it), else none. */
    uuid?: pulumi.Input<string>;
    /** Desired state. Default true; false stops the VM gracefully. */
    running?: pulumi.Input<boolean>;
    /** Start the VM at boot with a systemd unit (`pulumi-vfio-vm-<name>.service`). Default false. */
    autostart?: pulumi.Input<boolean>;
    /** Seconds a stop waits for the guest after `system_powerdown` before `quit` and signals. Default 60. */
    shutdownTimeoutSeconds?: pulumi.Input<number>;
    /** Extra QEMU arguments, appended as argv words (never through a shell). */
    extraArgs?: pulumi.Input<pulumi.Input<string>[]>;
    /** SSH connection to the host; absent means the machine running pulumi. Stored as a secret. */
    connection?: pulumi.Input<ConnectionArgs>;
}

/** An IommuBinding as a device input: its address and the functions it bound. */
function fromBinding(b: IommuBinding): pulumi.Output<PassthroughDeviceArgs> {
    return pulumi.all([b.address, b.members]).apply(([address, members]) => ({
        address,
        functions: members.filter((m) => m.managed).map((m) => m.address),
    }));
}

/** An MdevInstance as an mdev input: its UUID and type, and for NVIDIA vGPU 17+ the VF that carries it. */
function fromMdev(m: MdevInstance): pulumi.Output<MdevArgs> {
    return pulumi.all([m.uuid, m.typeId, m.backend, m.address]).apply(([uuid, type, backend, address]) => ({
        uuid,
        type,
        ...(backend === "nvidia-vgpu" && address ? { address } : {}),
    }));
}

/**
 * Runs a QEMU VM with host PCI devices, mediated devices and Looking Glass shared memory passed through, and keeps
 * it in the desired state (`running`), optionally starting it at boot.
 *
 * The QEMU command line is an output (`commandLine`), so `pulumi preview` shows exactly what will run and what
 * changes. `pulumi up` checks everything QEMU needs first (groups viable and bound to vfio-pci, mdevs, shared
 * memory kind and size, firmware, KVM, hugepages), starts QEMU daemonized with a QMP socket and verifies with QMP
 * that every device is there; a changed command line restarts the VM gracefully. `pulumi refresh` shows a VM that
 * died or lost a device; `pulumi destroy` asks the guest to power down, then quits QEMU and signals it.
 *
 * ## Example Usage
 *
 * ```typescript
 * import * as vfio from "pulumi-vfio";
 *
 * const gpu = new vfio.IommuBinding("gpu", { device: "0000:01:00.0" });
 * const lg = new vfio.KvmfrDevice("looking-glass", { index: 0, width: 2560, height: 1440, owner: "alice" });
 * const vm = new vfio.PassthroughVm("win11", {
 *     name: "win11",
 *     cpu: { cores: 6, threads: 2, pinning: [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13] },
 *     memoryMb: 16384,
 *     hugepages: true,
 *     firmware: { code: "/usr/share/OVMF/OVMF_CODE_4M.ms.fd", vars: "/usr/share/OVMF/OVMF_VARS_4M.ms.fd" },
 *     disks: ["/var/lib/vms/win11.qcow2"],
 *     devices: [gpu],
 *     sharedMemory: lg,
 *     hideHypervisor: true,
 *     autostart: true,
 * });
 * export const qemuArgv = vm.commandLine;
 * ```
 */
export class PassthroughVm extends pulumi.dynamic.Resource {
    public readonly name!: pulumi.Output<string>;
    public readonly running!: pulumi.Output<boolean>;
    public readonly autostart!: pulumi.Output<boolean>;
    /** The QEMU argv (program first), exactly as started. */
    public readonly commandLine!: pulumi.Output<string[]>;
    /** Every function passed through, with its IOMMU group. */
    public readonly hostDevices!: pulumi.Output<HostDevice[]>;
    /** What the host shows: `running`, `stopped`, `paused`, `unresponsive`, ... */
    public readonly status!: pulumi.Output<string>;
    /** QEMU's PID, or null when stopped. */
    public readonly pid!: pulumi.Output<number | null>;
    /** Host thread id of each vCPU. */
    public readonly vcpuThreads!: pulumi.Output<number[]>;
    /** Expected devices QMP's query-pci did not list. */
    public readonly missingDevices!: pulumi.Output<string[]>;
    public readonly pinningOk!: pulumi.Output<boolean>;
    /** The QMP socket (root-only, 0600). */
    public readonly qmpSocket!: pulumi.Output<string>;
    public readonly pidFile!: pulumi.Output<string>;
    public readonly runDir!: pulumi.Output<string>;
    /** The per-VM copy of the OVMF VARS file, or null. */
    public readonly varsFile!: pulumi.Output<string | null>;
    /** The systemd unit for autostart, or null. */
    public readonly unit!: pulumi.Output<string | null>;

    constructor(name: string, args: PassthroughVmArgs, opts?: pulumi.CustomResourceOptions) {
        const devices = args.devices?.map((d) => (d instanceof IommuBinding ? fromBinding(d) : d));
        const sm = args.sharedMemory;
        // A KvmfrDevice (or any resource with path/sizeMb) is passed by its values, not as a resource reference.
        const sharedMemory = sm === undefined ? undefined : pulumi.Resource.isInstance(sm) ? pulumi.output({ path: (sm as any).path, sizeMb: (sm as any).sizeMb }) : sm;
        const mdevs = args.mdevs?.map((m) => (m instanceof MdevInstance ? fromMdev(m) : m));
        super(
            thinProvider("passthroughVm"),
            name,
            {
                ...args,
                // Optional inputs are outputs too: list them so their Output exists even when unset.
                name: args.name,
                running: args.running,
                autostart: args.autostart,
                devices,
                mdevs,
                sharedMemory,
                connection: secretConnection(args.connection),
                commandLine: undefined,
                hostDevices: undefined,
                status: undefined,
                pid: undefined,
                vcpuThreads: undefined,
                missingDevices: undefined,
                pinningOk: undefined,
                qmpSocket: undefined,
                pidFile: undefined,
                runDir: undefined,
                varsFile: undefined,
                unit: undefined,
            },
            withSecretConnection(opts),
            "vfio",
            "PassthroughVm",
        );
    }
}
