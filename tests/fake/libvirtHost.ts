/**
 * The fake machine's libvirt host files, as Debian 12's libvirt-daemon-system 9.0 installs them (seen on the lab):
 * /etc/libvirt/qemu.conf with the default cgroup_device_acl commented out, an empty
 * /etc/apparmor.d/local/abstractions/libvirt-qemu, /usr/sbin/libvirtd; with `apparmor`, libvirtd's profile loaded
 * (/sys/kernel/security/apparmor/profiles). `systemctl try-restart libvirtd.service` restarts it only while it runs
 * (systemctl(1)) and, as libvirtd does, fails when qemu.conf's cgroup_device_acl does not parse.
 */
import { FakeKernel, FakeSubsystem } from "./kernel";

export const STOCK_QEMU_CONF = [
    "# Master configuration file for the QEMU driver.",
    "#",
    "#security_driver = \"selinux\"",
    "",
    "# This is the basic set of devices allowed / required by",
    "# all virtual machines.",
    "#",
    "#cgroup_device_acl = [",
    "#    \"/dev/null\", \"/dev/full\", \"/dev/zero\",",
    "#    \"/dev/random\", \"/dev/urandom\",",
    "#    \"/dev/ptmx\", \"/dev/kvm\"",
    "#]",
    "#",
    "# RDMA migration requires the following extra files to be added to the list:",
    "#   \"/dev/infiniband/rdma_cm\",",
    "",
    "#save_image_format = \"raw\"",
    "",
].join("\n");

export interface FakeLibvirt {
    running: boolean;
    restarts: number;
    /** The cgroup_device_acl libvirtd read at its last start (undefined: its built-in list). */
    acl?: string[];
    /** The next restart fails with this message (a daemon that does not come back for another reason). */
    failRestart?: string;
}

export const libvirt = (k: FakeKernel): FakeLibvirt => k.state.ext.libvirt;

/** The first active cgroup_device_acl's entries, or why libvirtd would refuse the file. */
function readAcl(text: string): { acl?: string[] } | { error: string } {
    const m = /^\s*cgroup_device_acl\s*=\s*\[([^\]]*)(\]?)/m.exec(text);
    if (!m) return {};
    if (!m[2]) return { error: "list is not closed with ]" };
    const items = m[1].split(",").map((x) => x.trim()).filter(Boolean);
    if (!items.every((x) => /^"[^"]*"$/.test(x))) return { error: "expecting a separator in list" };
    return { acl: items.map((x) => x.slice(1, -1)) };
}

const libvirtSubsystem: FakeSubsystem = {
    resolve: () => undefined,
    exec(k, argv) {
        const lv = libvirt(k);
        if (!lv || argv[0] !== "systemctl" || argv[1] !== "try-restart") return undefined;
        if (argv[2] !== "libvirtd.service") return { code: 5, stderr: `Failed to try-restart ${argv[2]}: Unit ${argv[2]} not found.` };
        if (!lv.running) return { code: 0 };
        lv.restarts++;
        if (lv.failRestart) {
            const stderr = lv.failRestart;
            delete lv.failRestart;
            lv.running = false;
            return { code: 1, stderr };
        }
        const r = readAcl(k.state.files["/etc/libvirt/qemu.conf"]?.data ?? "");
        if ("error" in r) {
            lv.running = false;
            return { code: 1, stderr: "Job for libvirtd.service failed because the control process exited with error code." };
        }
        lv.acl = r.acl;
        return { code: 0 };
    },
};

export function installLibvirt(k: FakeKernel, opts: { apparmor?: boolean; running?: boolean; qemuConf?: string } = {}): FakeKernel {
    k.state.files["/etc/libvirt/qemu.conf"] = { data: opts.qemuConf ?? STOCK_QEMU_CONF, mode: 0o644 };
    k.state.files["/etc/apparmor.d/local/abstractions/libvirt-qemu"] = { data: "", mode: 0o644 };
    k.state.files["/usr/sbin/libvirtd"] = { data: "", mode: 0o755 };
    if (opts.apparmor) k.state.files["/sys/kernel/security/apparmor/profiles"] = { data: "virt-aa-helper (enforce)\nlibvirtd (enforce)\n/usr/sbin/dhclient (enforce)\n", mode: 0o444 };
    k.state.ext.libvirt = { running: opts.running ?? true, restarts: 0 } satisfies FakeLibvirt;
    return k.use(libvirtSubsystem, { first: true });
}
