/**
 * The host half of a resource's `check`: read the host and plan (nothing changes), collecting the plan's problems.
 * What goes wrong on the way is reported on the field the user fixes: a host that cannot be reached
 * ({@link ConnectionError}) on `connection`; a {@link PlanError} on its own property; anything else thrown while
 * reading (a selector no device matches, a journal that does not parse) on `subject`, the input that names what was
 * read (`device`, `parent`, `physicalFunction`), or `connection` for a resource whose reads are the whole host's.
 * Errors are told apart by class, never by name or message.
 */
import type { CheckFailure } from "./check";
import { PlanError } from "./errors";
import { withHost } from "./host";
import { ConnectionError, type Connection } from "./host/ssh";
import type { Host } from "./host/types";

export async function checkOnHost(connection: Connection | undefined, onHost: Host | undefined, body: (host: Host) => Promise<CheckFailure[]>, subject = "connection"): Promise<CheckFailure[]> {
    try {
        return await withHost(connection, body, onHost);
    } catch (e) {
        const property = e instanceof ConnectionError ? "connection" : e instanceof PlanError ? e.property : subject;
        return [{ property, reason: (e as Error).message }];
    }
}
