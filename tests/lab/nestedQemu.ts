/**
 * A nested QEMU inside the lab guest that holds VFIO devices the way a VM does: started paused (-S, no CPU burnt
 * under TCG) and daemonized, so it keeps /dev/vfio/<group> open until it is stopped. `start` resolves with QEMU's
 * exit code and stderr: non-zero means QEMU refused the devices (not viable, busy, ...).
 */
import type { LabHandle } from "./lab";

export interface NestedDevice {
    /** `host=<bdf>` for a PCI device or VF, or `sysfsdev=/sys/bus/mdev/devices/<uuid>` for an mdev. */
    host?: string;
    sysfsdev?: string;
}

export async function startNestedQemu(lab: LabHandle, devices: NestedDevice[], pidfile = "/run/pv-nested.pid"): Promise<{ code: number; stderr: string }> {
    const args = ["qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-m", "128", "-nodefaults", "-display", "none", "-S"];
    devices.forEach((d, i) => args.push("-device", `vfio-pci,${d.host ? `host=${d.host}` : `sysfsdev=${d.sysfsdev}`},addr=0x${(5 + i).toString(16)}.0`));
    args.push("-daemonize", "-pidfile", pidfile);
    const r = await lab.ssh(args, { timeoutMs: 120_000 });
    return { code: r.code, stderr: r.stderr };
}

/** Stop it and wait until the process is gone (the kernel releases the groups when its fds close). */
export async function stopNestedQemu(lab: LabHandle, pidfile = "/run/pv-nested.pid"): Promise<void> {
    await lab.ssh([
        "sh",
        "-c",
        'f="$1"; test -f "$f" || exit 0; p=$(cat "$f"); kill "$p" 2>/dev/null; for i in $(seq 100); do test -e /proc/$p || break; sleep 0.1; done; rm -f "$f"',
        "sh",
        pidfile,
    ]);
}
