// The engine suite starts a plugin process per test.
jest.setTimeout(60_000);
