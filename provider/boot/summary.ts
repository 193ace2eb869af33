/**
 * The boot half of `pulumi-vfio inventory`: which boot loader the host has, what the kernel runs with and what the
 * boot loader will give it next, and what a reboot would change. Read in the inventory's first round trip.
 */
import { Bootloader, LoaderFacts, chooseBootloader, configuredParameters } from "./loaders";
import { chooseInitramfs, InitramfsGenerator } from "./early";

export interface BootSummary {
    /** The boot loader found (null: none we support). */
    loader: Bootloader | null;
    /** Why none was found: what was looked for. Null when one was. */
    problem: string | null;
    initramfs: InitramfsGenerator;
    /** /proc/cmdline's parameters (without BOOT_IMAGE and initrd). */
    running: string[];
    /** What the boot loader gives the kernel at the next boot; null when it cannot be read. */
    configured: string[] | null;
    /** Parameters the next boot adds (`+name=value`) or drops (`-name`), compared with the running kernel. */
    pending: string[];
}

/** The summary from BootConfig's own facts (read with `bootFactsQuery(q, defaults({}))`, no devices). */
export function bootSummary(f: LoaderFacts): BootSummary {
    const chosen = chooseBootloader("auto", f);
    const loader = "loader" in chosen ? chosen.loader : null;
    const configured = loader ? configuredParameters(loader, f) ?? null : null;
    const pending = configured ? [...configured.filter((w) => !f.running.includes(w)).map((w) => `+${w}`), ...f.running.filter((w) => !configured.includes(w)).map((w) => `-${w}`)] : [];
    return { loader, problem: "problem" in chosen ? chosen.problem.replace(/^bootloader: /, "") : null, initramfs: chooseInitramfs(f.present), running: f.running, configured, pending };
}

export function formatBootSummary(b: BootSummary): string[] {
    const out = [`boot: ${b.loader ?? `no supported boot loader (${b.problem})`}${b.loader ? `, initramfs: ${b.initramfs}` : ""}`, `  running:   ${b.running.join(" ") || "(unknown)"}`];
    if (b.configured) out.push(`  next boot: ${b.configured.join(" ")}`);
    if (b.pending.length) out.push(`  a reboot would change: ${b.pending.join(" ")}`);
    return out;
}
