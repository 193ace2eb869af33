/**
 * modprobe.d and modules-load.d, the one place module settings for boot are rendered (BootConfig's module options
 * and early binding, KvmfrDevice's `static_size_mb`). Formats: modprobe.d(5) (`options <module> <p>=<v> ...`,
 * `softdep <module> pre: <modules>`, `install <module> <command>`), modules-load.d(5) (one module name a line).
 */

/** A module parameter's value: a list becomes `a,b,c` (array parameters such as kvmfr's static_size_mb). */
export type ModuleOptionValue = string | number | boolean | (string | number)[];

/** modprobe(8) treats `-` and `_` in module names alike: compare names in this form. */
export const moduleKey = (name: string) => name.replace(/-/g, "_");

function optionValue(v: ModuleOptionValue): string {
    if (Array.isArray(v)) return v.join(",");
    if (typeof v === "boolean") return v ? "1" : "0";
    return String(v);
}

/** `options kvm ignore_msrs=1 report_ignored_msrs=0`: one modprobe.d line, parameters in the order given. */
export function optionsLine(module: string, options: Record<string, ModuleOptionValue>): string {
    const parts = Object.entries(options).map(([k, v]) => `${k}=${optionValue(v)}`);
    return ["options", module, ...parts].join(" ");
}

/** The parameters of each `options <module> ...` line of a modprobe.d text, in file order (modprobe applies them
 *  in that order, so a later value of a parameter wins). */
export function optionsLines(text: string | undefined, module: string): Record<string, string>[] {
    const out: Record<string, string>[] = [];
    for (const raw of (text ?? "").split("\n")) {
        const words = raw.replace(/#.*/, "").trim().split(/\s+/);
        if (words[0] !== "options" || moduleKey(words[1] ?? "") !== moduleKey(module)) continue;
        const found: Record<string, string> = {};
        for (const w of words.slice(2)) {
            const eq = w.indexOf("=");
            if (eq > 0) found[w.slice(0, eq)] = w.slice(eq + 1);
        }
        out.push(found);
    }
    return out;
}

/** A module's parameters as modprobe would apply them from a modprobe.d text (later lines win per parameter). */
export function moduleOptions(text: string | undefined, module: string): Record<string, string> {
    return Object.assign({}, ...optionsLines(text, module));
}

/** `softdep <module> pre: <first>`: loading `module` loads `first` before it. */
export const softdepLine = (module: string, first: string) => `softdep ${module} pre: ${first}`;

/** A modprobe.d or modules-load.d file we own: a header saying who wrote it, then the lines. */
export function ownedFile(who: string, lines: string[]): string {
    return [`# Written by pulumi-vfio (${who}); \`pulumi destroy\` removes it. Edit the Pulumi program, not this file.`, ...lines].join("\n") + "\n";
}
