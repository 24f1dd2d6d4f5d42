//! The registry header is in its own section of the executable, where a
//! dump reader without symbols or DWARF can find it.

use object::{Object, ObjectSection};

#[test]
fn the_executable_carries_the_registry_header_section() {
    // Use the crate, so that its code (and the section) is linked in.
    let fut = taskscope::instrument(async {}).named("header-probe");
    futures::executor::block_on(fut);

    let exe = std::env::current_exe().expect("current exe");
    let bytes = std::fs::read(&exe).expect("read the test executable");
    let file = object::File::parse(&*bytes).expect("an object file");
    let section = file
        .section_by_name("taskscope_registry")
        .expect("a taskscope_registry section");
    let data = section.data().expect("section data");
    let h = &taskscope::debug_header::TASKSCOPE_REGISTRY;
    assert!(data.len() >= h.header_size as usize, "{} bytes", data.len());
    assert_eq!(&data[..16], &taskscope::debug_header::MAGIC);
    let word = |at: usize| u32::from_ne_bytes(data[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!(word(16), taskscope::debug_header::VERSION);
    assert_eq!(
        word(20) as usize,
        std::mem::size_of::<usize>(),
        "pointer size"
    );
    assert_eq!(word(24), h.header_size);
    assert_eq!(
        word(28) as usize,
        taskscope::TASK_CELL_SIZE,
        "task record size"
    );
}
