/**
 * Errors that name what failed on the host: the file, the value, the errno and what to do about it.
 */
import { Op, OpResult, strerror } from "./host/types";

/** Hints for the errno values the kernel returns on the attributes we write (DOMAIN.md, LAB.md). */
function hint(path: string, errno: string | undefined): string {
    const leaf = path.slice(path.lastIndexOf("/") + 1);
    switch (errno) {
        case "ETIMEDOUT":
            return leaf === "unbind" || leaf === "remove"
                ? "the kernel is waiting for the process that holds the device (a running VM) to release it; stop that VM. The blocked writer was abandoned and stays in D state until then"
                : "the kernel did not answer in time; check dmesg";
        case "EBUSY":
            if (leaf === "bind") return "the device already has a driver, or a VM holds its IOMMU group; unbind it first or stop the VM";
            if (leaf === "sriov_numvfs") return "VFs are already enabled: the count must go through 0";
            return "the device is in use";
        case "ENODEV":
            if (leaf === "unbind") return "the device is not bound to that driver (it changed underneath us)";
            if (leaf === "bind") return "the driver does not match the device: a driver_override names another driver, or the device id is unknown to it";
            return "the device does not exist";
        case "ENOENT":
            if (leaf === "sriov_numvfs") return "the PF's driver does not support SR-IOV (a PF bound to vfio-pci needs `modprobe vfio-pci enable_sriov=1`)";
            return "the path does not exist on this host";
        case "ENOTTY":
            if (leaf === "reset") return "no listed reset method works for this function now (reset_method empty, or only a bus reset and another function shares its bus)";
            return "the kernel does not support this operation on the device";
        case "EINVAL":
            if (leaf === "reset_method") return "the device does not support that reset method now (its sysfs reset_method lists the ones it does)";
            if (leaf === "drivers_probe") return "the probe failed; the override stays in place (canonical/lxd#12128)";
            return "the kernel rejected the value";
        case "ERANGE":
            return "the value is above the device's limit";
        case "EEXIST":
            return "it already exists";
        case "EACCES":
        case "EPERM":
            return "run as root, or give the SSH user passwordless sudo";
        default:
            return "check dmesg on the host";
    }
}

export class SysfsError extends Error {
    constructor(
        public readonly path: string,
        public readonly errno: string | undefined,
        public readonly detail: string,
        public readonly hint: string,
    ) {
        super(`${detail}${errno ? `: ${errno} (${strerror(errno)})` : ""}. ${hint}`);
        this.name = "SysfsError";
    }

    static from(op: Op, r: OpResult): SysfsError {
        if (op.op === "exec") {
            const msg = (r.message ?? "").trim();
            return new SysfsError(op.argv[0], r.errno, `\`${op.argv.join(" ")}\` failed${r.code !== undefined ? ` with status ${r.code}` : ""}${msg ? `: ${msg}` : ""}`, r.errno === "ETIMEDOUT" ? "it did not finish in time" : "see its message");
        }
        const what = op.op === "write" ? `writing ${JSON.stringify(op.data.replace(/\n$/, ""))} to ${op.path}` : `${op.op} ${op.path}`;
        return new SysfsError(op.path, r.errno, `${what} failed`, hint(op.path, r.errno));
    }
}

/** A planned change was refused before anything was written. */
export class PlanError extends Error {
    constructor(
        public readonly property: string,
        message: string,
    ) {
        super(message);
        this.name = "PlanError";
    }
}
