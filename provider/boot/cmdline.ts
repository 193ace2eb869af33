/**
 * The kernel command line as data: parsing `/proc/cmdline` and boot loader lines, adding and removing parameters
 * without touching the user's own, and deciding whether the running kernel already has what is configured.
 *
 * Facts (Documentation/admin-guide/kernel-parameters.rst): parameters are separated by spaces, a value may be
 * double-quoted to hold spaces, `-` and `_` are the same in a parameter's name (`kvm.ignore_msrs` =
 * `kvm.ignore-msrs`), and when a parameter is given twice the later one is what the kernel (or module) sees.
 */

/** One parameter: `name` or `name=value`. */
export interface KernelParameter {
    name: string;
    value?: string;
}

/** Split a command line into its words, keeping double-quoted values whole (`a="b c"` is one word). */
export function splitCmdline(text: string): string[] {
    const out: string[] = [];
    let cur = "";
    let quoted = false;
    let any = false;
    for (const ch of text) {
        if (ch === '"') {
            quoted = !quoted;
            cur += ch;
            any = true;
        } else if (!quoted && /\s/.test(ch)) {
            if (any) out.push(cur);
            cur = "";
            any = false;
        } else {
            cur += ch;
            any = true;
        }
    }
    if (any) out.push(cur);
    return out;
}

/** The name of a parameter word, normalized (`-` → `_`), so `kvm.ignore-msrs=1` and `kvm.ignore_msrs` compare equal. */
export function parameterName(word: string): string {
    const eq = word.indexOf("=");
    return (eq < 0 ? word : word.slice(0, eq)).replace(/-/g, "_");
}

/** The words of a running command line that are kernel parameters, without the boot loader's own (BOOT_IMAGE, initrd). */
export function runningParameters(procCmdline: string): string[] {
    return splitCmdline(procCmdline).filter((w) => !/^(BOOT_IMAGE|initrd)=/.test(w));
}

/** A parameter as one word: what the boot loader puts on the line. Refuses anything that would not stay one word. */
const PARAMETER = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(=[A-Za-z0-9_.,:/+@=-]{0,256})?$/;

/** Why `word` cannot be a kernel parameter we write, or undefined when it can. */
export function parameterProblem(word: string): string | undefined {
    if (PARAMETER.test(word)) return undefined;
    if (/[\s]/.test(word)) return `${JSON.stringify(word)} contains white space: give each parameter as its own item (e.g. ["hugepagesz=1G", "hugepages=8"])`;
    if (/["'`\\$;]/.test(word)) return `${JSON.stringify(word)} contains a quote or shell character: a kernel parameter is name or name=value of letters, digits and _ . , : / + @ = -`;
    return `${JSON.stringify(word)} is not a kernel parameter: use name or name=value, e.g. intel_iommu=on`;
}

/**
 * The command line a boot loader gets from `current` once our parameters are applied: every word whose name is in
 * `remove` dropped, and each of `add` appended unless the same word is already the last of its name (so the user's
 * own `iommu=pt` is not doubled, while their `iommu=soft` is followed by ours and loses).
 */
export function applyParameters(current: string[], add: string[], remove: string[]): string[] {
    const drop = new Set(remove.map(parameterName));
    const out = current.filter((w) => !drop.has(parameterName(w)));
    for (const p of add) {
        if (lastOf(out, parameterName(p)) !== p) out.push(p);
    }
    return out;
}

/** The last word of a name in `words`, or undefined. */
function lastOf(words: string[], name: string): string | undefined {
    for (let i = words.length - 1; i >= 0; i--) if (parameterName(words[i]) === name) return words[i];
    return undefined;
}

/**
 * What of `add`/`remove` a command line does not have yet: for each parameter to add whose last occurrence is not it,
 * `name: missing` or `name: <theirs> (wants <ours>)`; for each name to remove that is present, `name: present`.
 * Empty when the command line has everything.
 */
export function missingParameters(words: string[], add: string[], remove: string[]): string[] {
    const out: string[] = [];
    for (const p of add) {
        const last = lastOf(words, parameterName(p));
        if (last !== p) out.push(last === undefined ? `${p} missing` : `${last} instead of ${p}`);
    }
    for (const r of remove) if (lastOf(words, parameterName(r)) !== undefined) out.push(`${r} present`);
    return out;
}

/** Lines about parameters that do nothing on this CPU (amd_iommu on Intel and the reverse), for the preview. */
export function vendorWarnings(add: string[], cpuVendor: string | undefined): string[] {
    const out: string[] = [];
    const names = add.map(parameterName);
    if (cpuVendor === "GenuineIntel" && names.some((n) => n === "amd_iommu" || n === "amd_iommu_intr"))
        out.push("warning: amd_iommu has no effect on this Intel CPU (GenuineIntel): use intel_iommu=on");
    if (cpuVendor === "AuthenticAMD" && names.some((n) => n === "intel_iommu"))
        out.push("warning: intel_iommu has no effect on this AMD CPU (AuthenticAMD): use amd_iommu=on (AMD-Vi is on by default when the firmware enables it)");
    return out;
}

/** The vendor:device pairs a `vfio-pci.ids=` parameter claims (e.g. `10de:2204,10de:1aef` → two pairs). */
export function vfioPciIds(add: string[]): string[] {
    const out: string[] = [];
    for (const p of add) {
        if (parameterName(p) !== "vfio_pci.ids") continue;
        const v = p.slice(p.indexOf("=") + 1);
        for (const id of v.split(",")) {
            const m = /^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})/.exec(id);
            if (m) out.push(`${m[1].toLowerCase()}:${m[2].toLowerCase()}`);
        }
    }
    return out;
}
