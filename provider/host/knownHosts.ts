/**
 * OpenSSH known_hosts files: which keys they list for a host, and what they say of the key a server offers.
 *
 * The format is sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT": one key per line as `[marker] hostnames keytype base64 [comment]`;
 * `#` lines and blank lines are ignored; `hostnames` is a comma-separated list of patterns (`*` and `?` wildcards, `!`
 * negates: a line whose negated pattern matches does not apply, whatever else matches), a host on a port other than
 * 22 is written `[host]:port`, and a hashed name is `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`. The markers are
 * `@revoked` (this key must never be accepted) and `@cert-authority` (a CA for host certificates; ssh2 does not
 * negotiate certificate host keys, so such lines never vouch for a plain key here and are only mentioned).
 * ssh(1) looks the host up lowercased, as the name it dials (after ssh_config's HostName) or HostKeyAlias.
 */
import { createHash, createHmac, randomBytes } from "crypto";
import * as fs from "fs";

export interface KnownHostLine {
    marker?: "revoked" | "cert-authority";
    /** The comma-separated host patterns, as written. */
    hosts: string;
    keyType: string;
    key: Buffer;
    /** Where the line is, for messages: `file:line`. */
    where: string;
}

/** The lines of one known_hosts text that carry a key; unparseable lines are skipped, as ssh(1) does. */
export function parseKnownHosts(text: string, file: string): KnownHostLine[] {
    const out: KnownHostLine[] = [];
    text.split(/\r?\n/).forEach((raw, i) => {
        const line = raw.trim();
        if (!line || line.startsWith("#")) return;
        const fields = line.split(/\s+/);
        let marker: KnownHostLine["marker"];
        if (fields[0].startsWith("@")) {
            const m = fields.shift()!;
            if (m === "@revoked") marker = "revoked";
            else if (m === "@cert-authority") marker = "cert-authority";
            else return;
        }
        if (fields.length < 3) return;
        const [hosts, keyType, blob] = fields;
        const key = Buffer.from(blob, "base64");
        if (key.length === 0 || blobKeyType(key) !== keyType) return;
        out.push({ marker, hosts, keyType, key, where: `${file}:${i + 1}` });
    });
    return out;
}

/** The name a host is looked up under: lowercased, `[host]:port` off port 22. */
export function knownHostsName(host: string, port: number): string {
    const h = host.toLowerCase();
    return port === 22 ? h : `[${h}]:${port}`;
}

/** `*` any run of characters, `?` exactly one; everything else literal (brackets and colons included). */
function wildcard(pattern: string, name: string): boolean {
    const re = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
    return new RegExp(`^${re}$`, "i").test(name);
}

function hashedMatches(pattern: string, name: string): boolean {
    const [, , salt, hash] = pattern.split("|");
    if (!salt || !hash) return false;
    return createHmac("sha1", Buffer.from(salt, "base64")).update(name).digest("base64") === hash;
}

/** Whether a line's `hosts` field names `name` (see the module comment for the rules). */
export function hostsMatch(hosts: string, name: string): boolean {
    if (hosts.startsWith("|1|")) return hashedMatches(hosts, name);
    let matched = false;
    for (const p of hosts.split(",")) {
        if (p.startsWith("!")) {
            if (wildcard(p.slice(1), name)) return false;
        } else if (wildcard(p, name)) {
            matched = true;
        }
    }
    return matched;
}

/** The key type a public key blob names (its first SSH string, RFC 4253 6.6). */
export function blobKeyType(blob: Buffer): string {
    if (blob.length < 4) return "";
    const n = blob.readUInt32BE(0);
    return n > 0 && 4 + n <= blob.length ? blob.subarray(4, 4 + n).toString("latin1") : "";
}

/** OpenSSH's fingerprint of a key: `SHA256:` and the unpadded base64 of the blob's SHA-256 (ssh-keygen -l). */
export function fingerprint(blob: Buffer): string {
    return "SHA256:" + createHash("sha256").update(blob).digest("base64").replace(/=+$/, "");
}

export type HostKeyVerdict =
    | { kind: "known"; where: string }
    | { kind: "unknown"; certAuthorities: string[] }
    | { kind: "changed"; known: { keyType: string; fingerprint: string; where: string }[] }
    | { kind: "revoked"; where: string };

/**
 * What `lines` say of `key` offered for `name`: a matching `@revoked` line wins (ssh(1) refuses a revoked key whatever
 * else lists it); then a plain line for the name with this key; then "changed" when plain lines list other keys for the
 * name (of this type or another: we prefer the known types in the key exchange, so another type means the server no
 * longer offers the known one); else unknown.
 */
export function judgeHostKey(lines: KnownHostLine[], name: string, key: Buffer): HostKeyVerdict {
    const mine = lines.filter((l) => hostsMatch(l.hosts, name));
    const revoked = mine.find((l) => l.marker === "revoked" && l.key.equals(key));
    if (revoked) return { kind: "revoked", where: revoked.where };
    const plain = mine.filter((l) => !l.marker);
    const same = plain.find((l) => l.key.equals(key));
    if (same) return { kind: "known", where: same.where };
    if (plain.length) return { kind: "changed", known: plain.map((l) => ({ keyType: l.keyType, fingerprint: fingerprint(l.key), where: l.where })) };
    return { kind: "unknown", certAuthorities: mine.filter((l) => l.marker === "cert-authority").map((l) => l.where) };
}

/** The key types the plain lines list for `name`, in file order, for the key exchange's preference. */
export function knownKeyTypes(lines: KnownHostLine[], name: string): string[] {
    const types: string[] = [];
    for (const l of lines) if (!l.marker && hostsMatch(l.hosts, name) && !types.includes(l.keyType)) types.push(l.keyType);
    return types;
}

/** Every known_hosts file that exists, parsed; a missing file is no entry (as for ssh), any other read error throws. */
export function readKnownHosts(files: string[]): KnownHostLine[] {
    const out: KnownHostLine[] = [];
    for (const f of files) {
        let text: string;
        try {
            text = fs.readFileSync(f, "utf8");
        } catch (e) {
            const code = (e as NodeJS.ErrnoException).code;
            if (code === "ENOENT" || code === "ENOTDIR") continue;
            throw new Error(`cannot read the known_hosts file ${f}${code ? ` (${code})` : ""}`);
        }
        out.push(...parseKnownHosts(text, f));
    }
    return out;
}

/**
 * Add `key` for `name` to a known_hosts file (StrictHostKeyChecking accept-new), hashed when HashKnownHosts is set.
 * The file is created 0600 in an existing directory (~/.ssh is the user's to create, with its mode).
 */
export function appendKnownHost(file: string, name: string, key: Buffer, hash: boolean): void {
    let hosts = name;
    if (hash) {
        const salt = randomBytes(20);
        hosts = `|1|${salt.toString("base64")}|${createHmac("sha1", salt).update(name).digest("base64")}`;
    }
    let prefix = "";
    try {
        const text = fs.readFileSync(file, "utf8");
        if (text.length && !text.endsWith("\n")) prefix = "\n";
    } catch {
        /* a new file */
    }
    fs.appendFileSync(file, `${prefix}${hosts} ${blobKeyType(key)} ${key.toString("base64")}\n`, { mode: 0o600 });
}

/** ssh2's host key algorithms (its default order), and the ones a key type is offered under. */
const DEFAULT_HOST_KEY_ALGORITHMS = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"];
function algorithmsFor(keyType: string): string[] {
    if (keyType === "ssh-rsa") return ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"];
    return DEFAULT_HOST_KEY_ALGORITHMS.includes(keyType) || keyType === "ssh-dss" ? [keyType] : [];
}

/**
 * The host key algorithms to offer, known types first, as ssh(1) orders them: a server with several host keys then
 * shows the one we know instead of one we would call "changed". Undefined: ssh2's default order.
 */
export function hostKeyAlgorithms(preferredTypes: string[]): string[] | undefined {
    const first = preferredTypes.flatMap(algorithmsFor);
    if (!first.length) return undefined;
    return [...new Set([...first, ...DEFAULT_HOST_KEY_ALGORITHMS])];
}
