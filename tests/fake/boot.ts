/**
 * The fake machine's boot path: /proc/cmdline, a boot id, and the boot loaders and initramfs generators BootConfig
 * drives, with the behaviour their documentation gives:
 * - Debian GRUB: `update-grub` sources /etc/default/grub and then /etc/default/grub.d/*.cfg in name order (run by a
 *   real `sh`, so a drop-in's shell means here what it means to grub-mkconfig) and writes grub.cfg's entries with
 *   `linux <image> root=... ro $GRUB_CMDLINE_LINUX $GRUB_CMDLINE_LINUX_DEFAULT` (recovery: without the DEFAULT part);
 * - systemd-boot: `kernel-install add` writes the entry's options from /etc/kernel/cmdline (else /proc/cmdline),
 *   `bootctl list --json=short` shows it;
 * - `update-initramfs -u` / `dracut -f` take a snapshot of the early-binding files they would pack;
 * - `systemctl reboot`: a new boot id, /proc/cmdline from the boot loader's default entry, and PCI as at boot with
 *   the snapshot's claimed addresses on vfio-pci (tests/fake/pci.ts bootPci).
 * The lab test (tests/lab/boot.lab.test.ts) boots the real ones.
 */
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { ExecResult, FakeKernel, FakeSubsystem } from "./kernel";
import { bootPci, pci } from "./pci";

export interface FakeBootState {
    cmdline: string;
    bootId: number;
    cpuVendor: string;
    /** The last initramfs generated: the early-binding files it holds. */
    initramfs?: { claim?: string; modprobe?: string };
    /** Commands that fail once: program name → stderr. */
    failing: Record<string, string>;
    /** Modules the root loads at boot (modules-load.d and drivers' own). */
    bootModules: string[];
}

export function boot(k: FakeKernel): FakeBootState {
    return k.state.ext.boot;
}

const file = (read: () => string) => ({ kind: "file" as const, read, mode: 0o444 });

export const bootSubsystem: FakeSubsystem = {
    resolve(k, p) {
        const b = boot(k);
        if (!b) return undefined;
        if (p === "/proc/cmdline") return file(() => b.cmdline + "\n");
        if (p === "/proc/sys/kernel/random/boot_id") return file(() => `00000000-0000-4000-8000-${String(b.bootId).padStart(12, "0")}\n`);
        if (p === "/proc/cpuinfo") return file(() => `processor\t: 0\nvendor_id\t: ${b.cpuVendor}\nmodel name\t: fake\n\nprocessor\t: 1\nvendor_id\t: ${b.cpuVendor}\n`);
        return undefined;
    },
    exec(k, argv) {
        const b = boot(k);
        if (!b) return undefined;
        const name = path.basename(argv[0]);
        const handled = ["update-grub", "grub-mkconfig", "update-initramfs", "dracut", "bootctl", "kernel-install", "grubby", "systemctl"];
        if (!handled.includes(name)) return undefined;
        if (!k.state.files[argv[0]] && argv[0].startsWith("/") && name !== "systemctl") return { code: 127, stderr: `bash: ${argv[0]}: No such file or directory` };
        k.state.execLog.push(argv);
        if (b.failing[name] !== undefined) {
            const stderr = b.failing[name];
            delete b.failing[name];
            return { code: 1, stderr };
        }
        switch (name) {
            case "update-grub":
            case "grub-mkconfig":
                return updateGrub(k);
            case "update-initramfs":
            case "dracut":
                b.initramfs = { claim: k.state.files["/usr/local/sbin/pulumi-vfio-claim"]?.data, modprobe: k.state.files["/etc/modprobe.d/pulumi-vfio.conf"]?.data };
                if (name === "update-initramfs" && !k.state.files["/etc/initramfs-tools/hooks/pulumi-vfio"]) b.initramfs = {};
                if (name === "dracut" && !k.state.files["/etc/dracut.conf.d/pulumi-vfio.conf"]) b.initramfs = {};
                if (name === "update-initramfs" && k.state.files["/etc/initramfs/post-update.d/systemd-boot"]) return kernelInstall(k, ["add", kernelRelease(k)]);
                return { code: 0 };
            case "bootctl":
                return bootctl(k, argv.slice(1));
            case "kernel-install":
                return kernelInstall(k, argv.slice(1));
            case "systemctl":
                if (argv[1] !== "reboot") return undefined;
                reboot(k);
                return { code: 0 };
            default:
                return { code: 1, stderr: `${name}: not modelled` };
        }
    },
};

function kernelRelease(k: FakeKernel): string {
    return pci(k).kernelRelease;
}

/** The words of GRUB_CMDLINE_LINUX and GRUB_CMDLINE_LINUX_DEFAULT after sourcing the files as grub-mkconfig does. */
function grubVariables(k: FakeKernel): { linux: string; linuxDefault: string } | { error: string } {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fake-grub-"));
    try {
        fs.writeFileSync(path.join(dir, "grub"), k.state.files["/etc/default/grub"]?.data ?? "");
        fs.mkdirSync(path.join(dir, "grub.d"));
        for (const [p, f] of Object.entries(k.state.files)) {
            if (p.startsWith("/etc/default/grub.d/") && p.endsWith(".cfg")) fs.writeFileSync(path.join(dir, "grub.d", path.basename(p)), f.data);
        }
        const script = '. "$1/grub"; for f in "$1"/grub.d/*.cfg; do [ -e "$f" ] && . "$f"; done; printf "%s\\n%s\\n" "$GRUB_CMDLINE_LINUX" "$GRUB_CMDLINE_LINUX_DEFAULT"';
        const r = spawnSync("sh", ["-c", script, "sh", dir], { encoding: "utf8", env: { PATH: "/usr/bin:/bin" } });
        if (r.status !== 0) return { error: r.stderr };
        const [linux, linuxDefault] = r.stdout.split("\n");
        return { linux: linux ?? "", linuxDefault: linuxDefault ?? "" };
    } finally {
        fs.rmSync(dir, { recursive: true, force: true });
    }
}

function updateGrub(k: FakeKernel): ExecResult {
    const v = grubVariables(k);
    if ("error" in v) return { code: 1, stderr: v.error };
    const kver = kernelRelease(k);
    const words = (s: string) => s.split(/\s+/).filter(Boolean).join(" ");
    const cfg = [
        "### generated by the fake update-grub ###",
        "menuentry 'Debian GNU/Linux' --class debian {",
        `\tlinux\t/boot/vmlinuz-${kver} ${words(`root=UUID=f00d ro ${v.linux} ${v.linuxDefault}`)}`,
        `\tinitrd\t/boot/initrd.img-${kver}`,
        "}",
        "menuentry 'Debian GNU/Linux (recovery mode)' --class debian {",
        `\tlinux\t/boot/vmlinuz-${kver} ${words(`root=UUID=f00d ro single ${v.linux}`)}`,
        "}",
        "",
    ].join("\n");
    k.state.files["/boot/grub/grub.cfg"] = { data: cfg, mode: 0o444 };
    return { code: 0, stderr: "Generating grub configuration file ...\ndone" };
}

function bootctl(k: FakeKernel, args: string[]): ExecResult {
    const entry = k.state.ext.sdboot as { options: string; version: string } | undefined;
    if (args[0] === "is-installed") return entry ? { code: 0 } : { code: 1 };
    if (args[0] === "list") {
        if (!entry) return { code: 1, stderr: "Couldn't find EFI system partition." };
        // As systemd 252 (Debian 12) prints it, seen on the lab: one object a line, no isDefault/isSelected, and
        // bootctl's own firmware-setup entry after the kernel's.
        const kernel = { id: `fake-${entry.version}.conf`, path: `/efi/loader/entries/fake-${entry.version}.conf`, version: entry.version, options: entry.options, linux: `/fake/${entry.version}/linux` };
        const firmware = { id: "auto-reboot-to-firmware-setup", path: "/sys/firmware/efi/efivars/LoaderEntries-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f", title: "Reboot Into Firmware Interface" };
        return { code: 0, stdout: `${JSON.stringify(kernel)}\n${JSON.stringify(firmware)}\n` };
    }
    return { code: 1, stderr: `bootctl ${args[0]}: not modelled` };
}

function kernelInstall(k: FakeKernel, args: string[]): ExecResult {
    if (args[0] !== "add") return { code: 1, stderr: "kernel-install: only add is modelled" };
    // 90-loaderentry.install: /etc/kernel/cmdline, else /proc/cmdline without BOOT_IMAGE= and initrd=.
    const options = k.state.files["/etc/kernel/cmdline"]?.data ?? boot(k).cmdline.split(/\s+/).filter((w) => !/^(BOOT_IMAGE|initrd)=/.test(w)).join(" ");
    k.state.ext.sdboot = { options: options.trim(), version: args[1] };
    return { code: 0 };
}

/** The default entry's parameters, as the boot loader hands them to the kernel. */
function bootEntryCmdline(k: FakeKernel): string {
    if (k.state.ext.sdboot) return k.state.ext.sdboot.options;
    const cfg = k.state.files["/boot/grub/grub.cfg"]?.data ?? "";
    const m = /^\s*linux\s+(\S+)\s*(.*)$/m.exec(cfg);
    return m ? `BOOT_IMAGE=${m[1]} ${m[2]}`.trim() : boot(k).cmdline;
}

/** A reboot of the fake machine (see the file comment). */
export function reboot(k: FakeKernel): void {
    const b = boot(k);
    b.cmdline = bootEntryCmdline(k);
    b.bootId++;
    const claim = b.initramfs?.claim ?? k.state.files["/usr/local/sbin/pulumi-vfio-claim"]?.data;
    const installed = (b.initramfs?.modprobe ?? k.state.files["/etc/modprobe.d/pulumi-vfio.conf"]?.data ?? "").includes("install vfio_pci");
    const claimed = claim && installed ? (/^for dev in (.*); do$/m.exec(claim)?.[1] ?? "").split(" ").filter(Boolean) : [];
    bootPci(k, claimed, b.bootModules);
    k.state.openers = {};
}

/** The lab host with Debian's GRUB (as a bookworm install has it) and initramfs-tools. */
export function addGrubBoot(k: FakeKernel, opts: { cmdlineDefault?: string; cpuVendor?: string } = {}): FakeKernel {
    const kver = kernelRelease(k);
    k.state.ext.boot = {
        cmdline: `BOOT_IMAGE=/boot/vmlinuz-${kver} root=UUID=f00d ro ${opts.cmdlineDefault ?? "quiet"}`.trim(),
        bootId: 1,
        cpuVendor: opts.cpuVendor ?? "GenuineIntel",
        failing: {},
        bootModules: ["bochs", "snd_hda_intel", "lpc_ich", "ahci", "i2c_i801", "nvme"],
    } satisfies FakeBootState;
    const exe = { data: "#!/bin/sh\n", mode: 0o755 };
    k.state.files["/etc/default/grub"] = { data: `GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT="${opts.cmdlineDefault ?? "quiet"}"\nGRUB_CMDLINE_LINUX=""\n`, mode: 0o644 };
    k.state.files["/usr/sbin/update-grub"] = exe;
    k.state.files["/usr/sbin/grub-mkconfig"] = exe;
    k.state.files["/usr/sbin/update-initramfs"] = exe;
    k.state.dirs.push("/etc/default/grub.d", "/etc/initramfs-tools/hooks", "/usr/local/sbin", "/boot/grub");
    updateGrub(k);
    return k;
}

/**
 * The lab host with systemd-boot (kernel-install, /etc/kernel/cmdline absent) and initramfs-tools; `initramfsHook`:
 * Debian's /etc/initramfs/post-update.d/systemd-boot, so update-initramfs runs kernel-install itself.
 */
export function addSystemdBoot(k: FakeKernel, opts: { initramfsHook?: boolean } = {}): FakeKernel {
    addGrubBoot(k);
    for (const p of ["/etc/default/grub", "/usr/sbin/update-grub", "/usr/sbin/grub-mkconfig", "/boot/grub/grub.cfg"]) delete k.state.files[p];
    const exe = { data: "#!/bin/sh\n", mode: 0o755 };
    k.state.files["/usr/bin/bootctl"] = exe;
    k.state.files["/usr/bin/kernel-install"] = exe;
    if (opts.initramfsHook) k.state.files["/etc/initramfs/post-update.d/systemd-boot"] = exe;
    k.state.ext.sdboot = { options: boot(k).cmdline.replace(/^BOOT_IMAGE=\S+\s*/, ""), version: kernelRelease(k) };
    return k;
}

/** The next run of `program` fails with `stderr`. */
export function failCommand(k: FakeKernel, program: string, stderr: string): void {
    boot(k).failing[program] = stderr;
}
