/**
 * The SSH host against an ssh2 Server on 127.0.0.1: host keys verified as ssh(1) does (known_hosts, hashed entries,
 * [host]:port, changed and revoked keys), ~/.ssh/config aliases, ssh's default identities, keys refused before
 * dialing, sudo refusals reported on `connection`, and connection failures that never leave an 'error' unheard.
 * Every test has its own temporary home and /etc/ssh, so the user's own files are never read.
 */
import { spawn, spawnSync } from "child_process";
import * as fs from "fs";
import * as net from "net";
import * as os from "os";
import * as path from "path";
import { AddressInfo } from "net";
import { Server, ServerChannel, utils as sshUtils } from "ssh2";
import { main, CliIO } from "../../provider/cli";
import { hostsMatch, fingerprint } from "../../provider/host/knownHosts";
import { Connection, ConnectionError, SshHost } from "../../provider/host/ssh";
import { SshEnvironment, readPrivateKeyFile } from "../../provider/host/sshConfig";
import { Host } from "../../provider/host/types";
import { check as checkVirtualFunctions } from "../../provider/virtualFunctions";
import { check as checkBinding } from "../../provider/iommuBinding";
import { check as checkMdev } from "../../provider/mdevInstance";

// Key generation (an encrypted key's KDF rounds) and SSH handshakes take seconds when the machine is loaded: a
// generous limit, so a slow machine does not fail a test of behaviour.
jest.setTimeout(30_000);

const SUDO = "'sudo' '-n' '--' ";

type ExecMode = "run" | "sudo-refuses";

interface TestServer {
    port: number;
    hostPublic: string;
    users: string[];
    connections: number;
    close(): Promise<void>;
}

const clientKey = sshUtils.generateKeyPairSync("ed25519");
const clientPublic = sshUtils.parseKey(clientKey.public) as ReturnType<typeof sshUtils.parseKey> & { getPublicSSH(): Buffer; verify(d: Buffer, s: Buffer, h?: string): boolean };

/** Run the command the client asked for on this machine (as sshd would), or refuse it as `sudo -n` does. */
function exec(command: string, ch: ServerChannel, mode: ExecMode): void {
    if (command.startsWith(SUDO)) {
        if (mode === "sudo-refuses") {
            ch.stderr.write("sudo: a password is required\n");
            ch.exit(1);
            ch.end();
            return;
        }
        command = command.slice(SUDO.length);
    }
    const child = spawn("sh", ["-c", command], { stdio: ["pipe", "pipe", "pipe"] });
    ch.pipe(child.stdin);
    child.stdout.pipe(ch, { end: false });
    child.stderr.pipe(ch.stderr, { end: false });
    child.on("close", (code) => {
        ch.exit(code ?? 1);
        ch.end();
    });
    ch.on("close", () => child.kill("SIGKILL"));
}

async function startServer(opts: { extraHostKeys?: string[]; mode?: ExecMode } = {}): Promise<TestServer> {
    const hostPair = sshUtils.generateKeyPairSync("ed25519");
    const hostPrivate = hostPair.private;
    const hostPublic = hostPair.public;
    const users: string[] = [];
    const state = { connections: 0 };
    const server = new Server({ hostKeys: [hostPrivate, ...(opts.extraHostKeys ?? [])] }, (client) => {
        state.connections++;
        client.on("error", () => undefined);
        client.on("authentication", (ctx) => {
            users.push(ctx.username);
            if (ctx.method === "publickey" && ctx.key.algo === "ssh-ed25519" && ctx.key.data.equals(clientPublic.getPublicSSH()) && (!ctx.signature || clientPublic.verify(ctx.blob!, ctx.signature, ctx.hashAlgo))) return ctx.accept();
            ctx.reject(["publickey"]);
        });
        client.on("ready", () =>
            client.on("session", (accept) => {
                const session = accept();
                session.on("exec", (acc, _rej, info) => exec(info.command, acc(), opts.mode ?? "run"));
            }),
        );
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const port = (server.address() as AddressInfo).port;
    return {
        port,
        hostPublic,
        users,
        get connections() {
            return state.connections;
        },
        close: () => new Promise<void>((r) => server.close(() => r())),
    };
}

let root: string;
let home: string;
let env: SshEnvironment;
let servers: TestServer[] = [];
const hosts: Host[] = [];
beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), "pv-ssh-"));
    home = path.join(root, "home");
    fs.mkdirSync(path.join(home, ".ssh"), { recursive: true, mode: 0o700 });
    fs.mkdirSync(path.join(root, "etc"));
    env = { home, etcDir: path.join(root, "etc"), agentSocket: "" };
});
afterEach(async () => {
    await Promise.all(hosts.splice(0).map((h) => h.close()));
    await Promise.all(servers.splice(0).map((s) => s.close()));
    fs.rmSync(root, { recursive: true, force: true });
});

async function server(opts?: Parameters<typeof startServer>[0]): Promise<TestServer> {
    const s = await startServer(opts);
    servers.push(s);
    return s;
}

function sshHost(conn: Partial<Connection> & { port?: number }, e: SshEnvironment = env): SshHost {
    const h = new SshHost({ host: "127.0.0.1", dialErrorLimit: 1, perDialTimeout: 10, ...conn } as Connection, e);
    hosts.push(h);
    return h;
}

const knownHosts = (text: string) => fs.writeFileSync(path.join(home, ".ssh", "known_hosts"), text);

/** What ssh-keygen says the fingerprint of a public key line is: the reference for our messages. */
function opensshFingerprint(publicLine: string): string {
    const f = path.join(root, "fp.pub");
    fs.writeFileSync(f, publicLine + "\n");
    const out = spawnSync("ssh-keygen", ["-l", "-E", "sha256", "-f", f], { encoding: "utf8" });
    if (out.status !== 0) throw new Error(`ssh-keygen -l failed: ${out.stderr}`);
    return out.stdout.split(/\s+/)[1];
}

async function readsAFile(h: SshHost): Promise<string> {
    const f = path.join(root, "probe");
    fs.writeFileSync(f, "over ssh\n");
    const [r] = await h.run([{ op: "read", path: f }]);
    return r.data;
}

async function failure(h: SshHost): Promise<Error> {
    return h.run([{ op: "read", path: "/etc/hostname" }]).then(
        () => {
            throw new Error("expected the connection to fail");
        },
        (e: Error) => e,
    );
}

describe("host key verification", () => {
    test("an unknown host key is refused with the host, its type, its SHA256 fingerprint and the fix", async () => {
        const s = await server();
        const err = await failure(sshHost({ port: s.port, privateKey: clientKey.private }));
        const fp = opensshFingerprint(s.hostPublic);
        expect(fp).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
        expect(err).toBeInstanceOf(ConnectionError);
        expect(err.message).toContain(`the host key of [127.0.0.1]:${s.port} is not known: the server offered ssh-ed25519 ${fp}`);
        expect(err.message).toContain(`ssh-keyscan -p ${s.port} 127.0.0.1 >> ~/.ssh/known_hosts`);
        expect(err.message).toContain("connection.hostKey");
        expect(err.message).not.toContain(clientKey.private.split("\n")[1]);
        // Refused during the key exchange: the login was never attempted.
        expect(s.users).toEqual([]);
    });

    test("a key listed for [host]:port is accepted and the batch runs", async () => {
        const s = await server();
        knownHosts(`# mine\n[127.0.0.1]:${s.port} ${s.hostPublic}\n`);
        expect(await readsAFile(sshHost({ port: s.port, privateKey: clientKey.private }))).toBe("over ssh\n");
    });

    test("an entry for the host on port 22 does not vouch for another port", async () => {
        const s = await server();
        knownHosts(`127.0.0.1 ${s.hostPublic}\n`);
        expect((await failure(sshHost({ port: s.port, privateKey: clientKey.private }))).message).toMatch(/is not known/);
    });

    test("a hashed entry written by ssh-keygen -H is matched", async () => {
        const s = await server();
        knownHosts(`[127.0.0.1]:${s.port} ${s.hostPublic}\n`);
        const file = path.join(home, ".ssh", "known_hosts");
        expect(spawnSync("ssh-keygen", ["-H", "-f", file]).status).toBe(0);
        expect(fs.readFileSync(file, "utf8")).toMatch(/^\|1\|[^ ]+\|[^ ]+ ssh-ed25519 /);
        expect(fs.readFileSync(file, "utf8")).not.toContain("127.0.0.1");
        expect(await readsAFile(sshHost({ port: s.port, privateKey: clientKey.private }))).toBe("over ssh\n");
    });

    test("the system file /etc/ssh/ssh_known_hosts counts too, with wildcard patterns", async () => {
        const s = await server();
        fs.writeFileSync(path.join(root, "etc", "ssh_known_hosts"), `gpu.lan,[127.0.0.?]:${s.port} ${s.hostPublic}\n`);
        expect(await readsAFile(sshHost({ port: s.port, privateKey: clientKey.private }))).toBe("over ssh\n");
    });

    test("a server with several host keys shows the type known_hosts lists, not one we would call changed", async () => {
        const rsa = sshUtils.generateKeyPairSync("rsa", { bits: 2048 });
        const s = await server({ extraHostKeys: [rsa.private] });
        knownHosts(`[127.0.0.1]:${s.port} ${rsa.public}\n`);
        expect(await readsAFile(sshHost({ port: s.port, privateKey: clientKey.private }))).toBe("over ssh\n");
        expect(await readsAFile(sshHost({ port: s.port, privateKey: clientKey.private, hostKey: rsa.public }))).toBe("over ssh\n");
    });

    test("a changed key is refused, naming both fingerprints and where the old one is", async () => {
        const s = await server();
        const old = sshUtils.generateKeyPairSync("ed25519").public;
        knownHosts(`[127.0.0.1]:${s.port} ${old}\n`);
        const err = await failure(sshHost({ port: s.port, privateKey: clientKey.private }));
        expect(err).toBeInstanceOf(ConnectionError);
        expect(err.message).toContain(`the host key of [127.0.0.1]:${s.port} has CHANGED: the server offered ssh-ed25519 ${opensshFingerprint(s.hostPublic)}`);
        expect(err.message).toContain(`ssh-ed25519 ${opensshFingerprint(old)} (~/.ssh/known_hosts:1)`);
        expect(err.message).toMatch(/man-in-the-middle/);
        expect(err.message).toContain(`ssh-keygen -R '[127.0.0.1]:${s.port}'`);
    });

    test("a key marked @revoked is refused even when another line lists it", async () => {
        const s = await server();
        knownHosts(`[127.0.0.1]:${s.port} ${s.hostPublic}\n@revoked * ${s.hostPublic}\n`);
        expect((await failure(sshHost({ port: s.port, privateKey: clientKey.private }))).message).toMatch(/is marked @revoked in ~\/\.ssh\/known_hosts:2/);
    });

    test("an explicit hostKey (key line or fingerprint) is the key checked; a wrong one says so", async () => {
        const s = await server();
        expect(await readsAFile(sshHost({ port: s.port, privateKey: clientKey.private, hostKey: s.hostPublic }))).toBe("over ssh\n");
        expect(await readsAFile(sshHost({ port: s.port, privateKey: clientKey.private, hostKey: opensshFingerprint(s.hostPublic) }))).toBe("over ssh\n");
        const wrong = sshUtils.generateKeyPairSync("ed25519").public;
        const err = await failure(sshHost({ port: s.port, privateKey: clientKey.private, hostKey: wrong }));
        expect(err.message).toMatch(/host key does not match connection.hostKey/);
        expect(err.message).toContain(opensshFingerprint(s.hostPublic));
    });

    test('hostKeyCheck "insecure-skip" is the only way to accept an unknown key, and contradicts a hostKey', async () => {
        const s = await server();
        expect(await readsAFile(sshHost({ port: s.port, privateKey: clientKey.private, hostKeyCheck: "insecure-skip" }))).toBe("over ssh\n");
        const err = await failure(sshHost({ port: s.port, privateKey: clientKey.private, hostKeyCheck: "insecure-skip", hostKey: s.hostPublic }));
        expect(err.message).toMatch(/contradict/);
    });

    test("hostKeyCheck is part of every resource's connection schema, and only its two values pass check", async () => {
        const ok = await checkBinding({}, { device: "0000:01:00.0", connection: { host: "gpu.lan", hostKeyCheck: "insecure-skip" } }, sshHost({ port: 1, hostKeyCheck: "insecure-skip", privateKey: clientKey.private }));
        expect(ok.failures.map((f) => f.property)).toEqual(["connection"]);
        expect(ok.failures[0].reason).toMatch(/ECONNREFUSED/);
        const bad = await checkBinding({}, { device: "0000:01:00.0", connection: { host: "gpu.lan", hostKeyCheck: "off" } });
        expect(bad.failures).toEqual([{ property: "connection.hostKeyCheck", reason: expect.stringMatching(/known-hosts.*insecure-skip|insecure-skip.*known-hosts/) }]);
    });

    test("StrictHostKeyChecking accept-new records an unknown key, then holds it to that key", async () => {
        const s = await server();
        fs.writeFileSync(path.join(home, ".ssh", "config"), "Host *\n  StrictHostKeyChecking accept-new\n");
        expect(await readsAFile(sshHost({ port: s.port, privateKey: clientKey.private }))).toBe("over ssh\n");
        expect(fs.readFileSync(path.join(home, ".ssh", "known_hosts"), "utf8")).toBe(`[127.0.0.1]:${s.port} ${s.hostPublic}\n`);
        const other = await server();
        fs.writeFileSync(path.join(home, ".ssh", "known_hosts"), `[127.0.0.1]:${other.port} ${s.hostPublic}\n`);
        expect((await failure(sshHost({ port: other.port, privateKey: clientKey.private }))).message).toMatch(/has CHANGED/);
    });

    test.each([
        ["gpu.lan", "gpu.lan", true],
        ["GPU.lan", "gpu.lan", true],
        ["*.lan", "gpu.lan", true],
        ["gpu?.lan", "gpu1.lan", true],
        ["gpu?.lan", "gpu.lan", false],
        ["*.lan,!gpu.lan", "gpu.lan", false],
        ["other,gpu.lan", "gpu.lan", true],
        ["[gpu.lan]:2222", "[gpu.lan]:2222", true],
        ["[gpu.lan]:2222", "gpu.lan", false],
        ["gpu.lan", "[gpu.lan]:2222", false],
    ])("known_hosts pattern %j against %j: %s", (hosts, name, expected) => {
        expect(hostsMatch(hosts, name)).toBe(expected);
    });
});

describe("~/.ssh/config and default identities", () => {
    test("a Host alias gives HostName, Port, User and IdentityFile (first match wins); explicit fields win", async () => {
        const s = await server();
        knownHosts(`[127.0.0.1]:${s.port} ${s.hostPublic}\n`);
        fs.writeFileSync(path.join(home, ".ssh", "gpu_key"), clientKey.private, { mode: 0o600 });
        fs.writeFileSync(
            path.join(home, ".ssh", "config"),
            `Host gpu gpu-box\n  HostName 127.0.0.1\n  Port ${s.port}\n  User admin\n  IdentityFile ~/.ssh/gpu_key\n\nHost *\n  User nobody-else\n  Port 1\n`,
        );
        expect(await readsAFile(sshHost({ host: "gpu" }))).toBe("over ssh\n");
        expect(s.users.at(-1)).toBe("admin");
        expect(await readsAFile(sshHost({ host: "gpu", user: "operator" }))).toBe("over ssh\n");
        expect(s.users.at(-1)).toBe("operator");
        fs.rmSync(path.join(home, ".ssh", "gpu_key"));
        expect((await failure(sshHost({ host: "gpu" }))).message).toMatch(new RegExp(`^cannot connect to admin@127\\.0\\.0\\.1:${s.port} \\(gpu in ssh_config\\) over SSH: no SSH credentials: .*IdentityFile ~/\\.ssh/gpu_key cannot be read \\(ENOENT\\)`));
        // Port 1 from `Host *` would fail: the explicit port wins.
        fs.writeFileSync(path.join(home, ".ssh", "config"), `Host *\n  Port 1\n`);
        expect(await readsAFile(sshHost({ port: s.port, privateKey: clientKey.private }))).toBe("over ssh\n");
    });

    test("without a key or password, ssh's default identity files are tried; an encrypted one is skipped with a note", async () => {
        const s = await server();
        knownHosts(`[127.0.0.1]:${s.port} ${s.hostPublic}\n`);
        const encrypted = sshUtils.generateKeyPairSync("ed25519", { passphrase: "hunter22", cipher: "aes256-cbc", rounds: 4 }).private;
        fs.writeFileSync(path.join(home, ".ssh", "id_rsa"), encrypted, { mode: 0o600 });
        fs.writeFileSync(path.join(home, ".ssh", "id_ed25519"), clientKey.private, { mode: 0o600 });
        expect(await readsAFile(sshHost({ port: s.port }))).toBe("over ssh\n");

        fs.rmSync(path.join(home, ".ssh", "id_ed25519"));
        const err = await failure(sshHost({ port: s.port }));
        expect(err).toBeInstanceOf(ConnectionError);
        expect(err.message).toContain("skipped ~/.ssh/id_rsa: it is encrypted (add it to ssh-agent: ssh-add ~/.ssh/id_rsa)");
        expect(err.message).toContain("no SSH credentials");
        expect(err.message).toContain("~/.ssh/id_ecdsa_sk");
    });

    test("a key the server does not accept is named in the authentication failure", async () => {
        const s = await server();
        knownHosts(`[127.0.0.1]:${s.port} ${s.hostPublic}\n`);
        fs.writeFileSync(path.join(home, ".ssh", "id_ecdsa"), sshUtils.generateKeyPairSync("ecdsa", { bits: 256 }).private, { mode: 0o600 });
        const err = await failure(sshHost({ port: s.port }));
        expect(err.message).toMatch(/authentication failed as root \(tried ~\/\.ssh\/id_ecdsa\)/);
    });
});

describe("keys refused before dialing", () => {
    test("a public key given as connection.privateKey is refused at once, and no connection is made", async () => {
        const s = await server();
        knownHosts(`[127.0.0.1]:${s.port} ${s.hostPublic}\n`);
        const err = await failure(sshHost({ port: s.port, privateKey: clientKey.public }));
        expect(err).toBeInstanceOf(ConnectionError);
        expect(err.message).toContain("connection.privateKey: that is a public key; give the private key file (without .pub)");
        expect(s.connections).toBe(0);
    });

    test("the CLI's -i key.pub is refused by the same check", async () => {
        const pub = path.join(home, ".ssh", "id_ed25519.pub");
        fs.writeFileSync(pub, clientKey.public + "\n");
        expect(() => readPrivateKeyFile(pub)).toThrow(`cannot use the key file ${pub}: that is a public key; give the private key file (without .pub)`);
        const seen = { stdout: "", stderr: "", dialed: 0 };
        const io: CliIO = {
            stdout: (t) => (seen.stdout += t),
            stderr: (t) => (seen.stderr += t),
            host: () => {
                seen.dialed++;
                throw new Error("no host should be made");
            },
            readFile: (p) => fs.readFileSync(p, "utf8"),
            env: {},
        };
        expect(await main(["inventory", "--ssh", "root@127.0.0.1", "-i", pub], io)).toBe(1);
        expect(seen.stderr).toBe(`pulumi-vfio inventory: error: cannot use the key file ${pub}: that is a public key; give the private key file (without .pub)\n`);
        expect(seen.dialed).toBe(0);
    });
});

describe("a user without passwordless sudo", () => {
    test("is reported on `connection` with the fix, by every resource's check", async () => {
        const s = await server({ mode: "sudo-refuses" });
        knownHosts(`[127.0.0.1]:${s.port} ${s.hostPublic}\n`);
        const expected = /root or passwordless sudo is needed: log in as root or allow NOPASSWD for deploy/;
        const vf = await checkVirtualFunctions({}, { physicalFunction: "0000:03:00.0", count: 2 }, sshHost({ port: s.port, user: "deploy", privateKey: clientKey.private }));
        expect(vf.failures).toEqual([{ property: "connection", reason: expect.stringMatching(expected) }]);
        const binding = await checkBinding({}, { device: "0000:01:00.0" }, sshHost({ port: s.port, user: "deploy", privateKey: clientKey.private }));
        expect(binding.failures).toEqual([{ property: "connection", reason: expect.stringMatching(expected) }]);
        expect(binding.failures[0].reason).toContain("sudo said: sudo: a password is required");
        const mdev = await checkMdev({}, { parent: "0000:00:02.0", type: "i915-GVTg_V5_4", uuid: "8d8c3e2e-4c1a-4b7e-9f55-0b7d3c2a9e11" }, sshHost({ port: s.port, user: "deploy", privateKey: clientKey.private }));
        expect(mdev.failures).toEqual([{ property: "connection", reason: expect.stringMatching(expected) }]);
    });

    test("with passwordless sudo the same user's batches run", async () => {
        const s = await server({ mode: "run" });
        knownHosts(`[127.0.0.1]:${s.port} ${s.hostPublic}\n`);
        expect(await readsAFile(sshHost({ port: s.port, user: "deploy", privateKey: clientKey.private }))).toBe("over ssh\n");
    });
});

describe("a server that drops the connection", () => {
    /** A TCP server that misbehaves at one point of the SSH handshake, then closes or resets the connection. */
    async function rude(behaviour: (sock: net.Socket) => void): Promise<{ port: number; close(): Promise<void> }> {
        const open = new Set<net.Socket>();
        const srv = net.createServer((sock) => {
            open.add(sock);
            sock.on("error", () => undefined);
            sock.on("close", () => open.delete(sock));
            behaviour(sock);
        });
        await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
        return {
            port: (srv.address() as AddressInfo).port,
            close: () =>
                new Promise<void>((r) => {
                    for (const s of open) s.destroy();
                    srv.close(() => r());
                }),
        };
    }

    const BEHAVIOURS: [string, (sock: net.Socket) => void][] = [
        ["resets at once", (s) => s.resetAndDestroy()],
        ["closes at once", (s) => s.end()],
        ["closes after its banner", (s) => s.end("SSH-2.0-rude\r\n")],
        ["resets after its banner", (s) => s.write("SSH-2.0-rude\r\n", () => s.resetAndDestroy())],
        ["sends garbage after its banner, then resets", (s) => s.write("SSH-2.0-rude\r\n" + "\0\0\0\x0c\x0a\x14garbage-packet".repeat(4), () => setTimeout(() => s.resetAndDestroy(), 5))],
        ["speaks another protocol, then resets", (s) => s.write("HTTP/1.1 400 Bad Request\r\n\r\n", () => setTimeout(() => s.resetAndDestroy(), 1))],
        ["reads the client's banner, then resets", (s) => s.once("data", () => s.resetAndDestroy())],
    ];

    test.each(BEHAVIOURS)("a server that %s fails every dial with a ConnectionError and no unhandled 'error'", async (_name, behaviour) => {
        const srv = await rude(behaviour);
        const uncaught: Error[] = [];
        const onUncaught = (e: Error) => uncaught.push(e);
        process.on("uncaughtException", onUncaught);
        try {
            for (let i = 0; i < 10; i++) {
                const h = new SshHost({ host: "127.0.0.1", port: srv.port, privateKey: clientKey.private, hostKeyCheck: "insecure-skip", dialErrorLimit: 2, perDialTimeout: 5 }, env);
                const t0 = Date.now();
                const err = await failure(h);
                await h.close();
                expect(err).toBeInstanceOf(ConnectionError);
                expect(err.message).toMatch(/^cannot connect to root@127\.0\.0\.1:\d+ over SSH: /);
                expect(Date.now() - t0).toBeLessThan(5_000);
            }
            // Errors emitted after a dial failed come a little later: give them the time to show up.
            await new Promise((r) => setTimeout(r, 100));
        } finally {
            process.off("uncaughtException", onUncaught);
            await srv.close();
        }
        expect(uncaught).toEqual([]);
    }, 60_000);
});

test("fingerprint() is OpenSSH's SHA256 form", () => {
    const pair = sshUtils.generateKeyPairSync("ed25519");
    const blob = Buffer.from(pair.public.split(/\s+/)[1], "base64");
    expect(fingerprint(blob)).toBe(opensshFingerprint(pair.public));
});
