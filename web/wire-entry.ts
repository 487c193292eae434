// Entry point of dist/wire.js (built by scripts/gen-flatbuffers.sh with
// esbuild): the flatc --ts code for schema/ringchat.fbs plus the parts of the
// flatbuffers runtime the client uses, as one ES module with no imports.
export * from './gen/ringchat/wire.js';
export { Builder, ByteBuffer, SIZE_PREFIX_LENGTH } from 'flatbuffers';
