import * as pulumi from "@pulumi/pulumi";
import type { VmStatus } from "../provider/passthroughVm";
import type { HostDevice } from "../provider/qemu/cmdline";
import { IommuBinding } from "./iommuBinding";
import { MdevInstance } from "./mdevInstance";
import { secretConnection, thinProvider, withSecretConnection } from "./provider";
import type { CpuArgs, DiskArgs, FirmwareArgs, PassthroughVmArgs as GeneratedVmArgs, MdevArgs, NetworkArgs, PassthroughDeviceArgs, SharedMemoryArgs } from "./generated/args";
import { ConnectionArgs } from "./types";

export type { HostDevice };

// The Args are generated from schema/passthrough-vm.schema.json (docs and defaults included): see scripts/gen-schema.js.
// Only `devices` and `mdevs` are widened here: they also take the SDK's resources, which no schema can name.
export type { CpuArgs, DiskArgs, FirmwareArgs, MdevArgs, NetworkArgs, PassthroughDeviceArgs, SharedMemoryArgs };

/**
 * A QEMU VM's inputs: those of schema/passthrough-vm.schema.json, with `devices` and `mdevs` also taking resources.
 */
export interface PassthroughVmArgs extends Omit<GeneratedVmArgs, "devices" | "mdevs"> {
    /**
     * Host PCI devices: IommuBinding resources (their bound functions pass through, and the VM depends on them, so it
     * is stopped before they are released), addresses, or device objects. Every function of a group goes, function 0
     * with `multifunction=on`. Default: none.
     */
    devices?: (IommuBinding | pulumi.Input<string | PassthroughDeviceArgs>)[];
    /**
     * Mediated devices (`-device vfio-pci,sysfsdev=…`): MdevInstance resources, UUIDs, or `{uuid, type}`. An NVIDIA
     * vGPU also sets `-uuid`. Default: none.
     */
    mdevs?: (MdevInstance | pulumi.Input<string | MdevArgs>)[];
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
export type { VmStatus };

export class PassthroughVm extends pulumi.dynamic.Resource {
    /** QEMU's `-name` and the VM's run directory name (`/run/pulumi-vfio/vm/<name>`). */
    public readonly name!: pulumi.Output<string>;
    /** The desired state as given: running (default true) or stopped. */
    public readonly running!: pulumi.Output<boolean>;
    /** Whether a systemd unit (`pulumi-vfio-vm-<name>.service`) starts the VM at boot. */
    public readonly autostart!: pulumi.Output<boolean>;
    /** The QEMU argv (program first), exactly as started. */
    public readonly commandLine!: pulumi.Output<string[]>;
    /** Every function passed through, with its IOMMU group. */
    public readonly hostDevices!: pulumi.Output<HostDevice[]>;
    /** What the host shows: QEMU's run state from QMP `query-status` (`running`, `paused`, `shutdown`, ...), `stopped`
     *  when no QEMU runs, `unresponsive` when QMP does not answer. */
    public readonly status!: pulumi.Output<VmStatus>;
    /** QEMU's PID, or null when stopped. */
    public readonly pid!: pulumi.Output<number | null>;
    /** Host thread id of each vCPU. */
    public readonly vcpuThreads!: pulumi.Output<number[]>;
    /** Expected devices QMP's query-pci did not list. */
    public readonly missingDevices!: pulumi.Output<string[]>;
    /** True when every vCPU thread is pinned as `cpu.pinning` asks (or nothing is asked). */
    public readonly pinningOk!: pulumi.Output<boolean>;
    /** The QMP socket (root-only, 0600). */
    public readonly qmpSocket!: pulumi.Output<string>;
    /** QEMU's pid file on the host (`-pidfile`). */
    public readonly pidFile!: pulumi.Output<string>;
    /** The VM's run directory on the host: QMP socket, pid file, firmware variables copy. */
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
